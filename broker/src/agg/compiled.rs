//! A definition compiled to fold records: every JSON path it reads resolved to a slot of the
//! one extraction pass over a record's value, and its filter reading those slots.

use super::def::{AggregationDef, GroupBy, TimeSource};
use super::filter::Expr;
use super::json::Path;

/// A definition made ready to fold records: paths resolved to slots.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The definition.
    pub def: AggregationDef,
    pub(super) paths: Vec<Path>,
    pub(super) time_slot: Option<usize>,
    pub(super) group_slots: Vec<Option<usize>>,
    pub(super) measure_slots: Vec<Option<usize>>,
    pub(super) filter: Option<Expr>,
}

impl Compiled {
    /// The JSON fields the aggregation reads, in slot order.
    pub fn paths(&self) -> &[Path] {
        &self.paths
    }

    /// Compiles a definition (validating it).
    pub fn new(def: AggregationDef) -> Result<Compiled, String> {
        def.validate()?;
        let mut paths: Vec<Path> = Vec::new();
        let mut slot = |text: &str| -> Result<usize, String> {
            let p = Path::parse(text)?;
            Ok(match paths.iter().position(|q| *q == p) {
                Some(i) => i,
                None => {
                    paths.push(p);
                    paths.len() - 1
                }
            })
        };
        let time_slot = match &def.time {
            TimeSource::Timestamp => None,
            TimeSource::Field(f) => Some(slot(f)?),
        };
        let group_slots = def
            .group_by
            .iter()
            .map(|g| match g {
                GroupBy::Key => Ok(None),
                GroupBy::Field(f) => slot(f).map(Some),
            })
            .collect::<Result<_, String>>()?;
        let measure_slots = def
            .measures
            .iter()
            .map(|m| m.field.as_deref().map(&mut slot).transpose())
            .collect::<Result<_, String>>()?;
        let filter = match &def.filter {
            None => None,
            Some(f) => {
                let (mut expr, fields) = Expr::parse_with_fields(f)?;
                let slots: Vec<usize> = fields
                    .iter()
                    .map(|f| slot(f))
                    .collect::<Result<_, String>>()?;
                // The filter reads the extracted values directly.
                expr.map_fields(&|i| slots[i]);
                Some(expr)
            }
        };
        Ok(Compiled {
            def,
            paths,
            time_slot,
            group_slots,
            measure_slots,
            filter,
        })
    }
}
