//! Filter expressions: comparisons of JSON fields with literals (or other fields), combined
//! with `and`, `or`, `not` and parentheses:
//! `status == "alarm" and temperature > 30`, `not (site == "north" or level >= 3)`.
//!
//! A comparison with a missing field, or between values of different types, is false.

use super::json::{Path, Scalar};

/// Longest filter accepted, and deepest nesting.
const MAX_LEN: usize = 4096;
const MAX_NESTING: usize = 32;

/// A parsed filter. Fields are numbered in [`Expr::fields`] order.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Both hold.
    And(Box<Expr>, Box<Expr>),
    /// Either holds.
    Or(Box<Expr>, Box<Expr>),
    /// It does not hold.
    Not(Box<Expr>),
    /// A comparison.
    Cmp(Operand, Op, Operand),
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A field's value (index into the expression's field list).
    Field(usize, String),
    /// A number.
    Num(f64),
    /// A string.
    Str(String),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(f64),
    Op(Op),
    And,
    Or,
    Not,
    Open,
    Close,
}

fn tokenize(src: &str) -> Result<Vec<(usize, Token)>, String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let at = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((at, Token::Open));
                i += 1;
            }
            b')' => {
                out.push((at, Token::Close));
                i += 1;
            }
            b'=' | b'!' | b'<' | b'>' | b'&' | b'|' => {
                let two = b.get(i..i + 2).unwrap_or(&b[i..i + 1]);
                let (tok, len) = match two {
                    b"==" => (Token::Op(Op::Eq), 2),
                    b"!=" => (Token::Op(Op::Ne), 2),
                    b"<=" => (Token::Op(Op::Le), 2),
                    b">=" => (Token::Op(Op::Ge), 2),
                    b"&&" => (Token::And, 2),
                    b"||" => (Token::Or, 2),
                    _ => match c {
                        b'<' => (Token::Op(Op::Lt), 1),
                        b'>' => (Token::Op(Op::Gt), 1),
                        b'=' => (Token::Op(Op::Eq), 1),
                        b'!' => (Token::Not, 1),
                        _ => return Err(format!("at {at}: unexpected `{}`", c as char)),
                    },
                };
                out.push((at, tok));
                i += len;
            }
            b'"' | b'\'' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&ch) = b.get(i) else {
                        return Err(format!("at {at}: unterminated string"));
                    };
                    if ch == quote {
                        i += 1;
                        break;
                    }
                    if ch == b'\\' {
                        match b.get(i + 1) {
                            Some(&e @ (b'"' | b'\'' | b'\\')) => s.push(e as char),
                            Some(b'n') => s.push('\n'),
                            Some(b't') => s.push('\t'),
                            _ => return Err(format!("at {i}: unknown escape in a string")),
                        }
                        i += 2;
                        continue;
                    }
                    // Copy one UTF-8 character.
                    let len = utf8_len(ch);
                    s.push_str(src.get(i..i + len).ok_or("invalid UTF-8 in a string")?);
                    i += len;
                }
                out.push((at, Token::Str(s)));
            }
            b'0'..=b'9' | b'-' | b'+' | b'.' => {
                let start = i;
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_digit()
                        || matches!(b[i], b'.' | b'e' | b'E')
                        || (matches!(b[i], b'-' | b'+') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                let text = &src[start..i];
                let n: f64 = text
                    .parse()
                    .ok()
                    .filter(|n: &f64| n.is_finite())
                    .ok_or_else(|| format!("at {start}: `{text}` is not a number"))?;
                out.push((at, Token::Num(n)));
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c == b'@' || c == b'$' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || matches!(b[i], b'_' | b'.' | b'-' | b'@' | b'$' | b':')
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                let word = &src[start..i];
                out.push((
                    at,
                    match word.to_ascii_lowercase().as_str() {
                        "and" => Token::And,
                        "or" => Token::Or,
                        "not" => Token::Not,
                        _ => Token::Ident(word.to_string()),
                    },
                ));
            }
            _ => return Err(format!("at {at}: unexpected `{}`", c as char)),
        }
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
    fields: Vec<String>,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(at, _)| *at)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.not()?;
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(format!("nested deeper than {MAX_NESTING} levels"));
        }
        let e = if self.peek() == Some(&Token::Not) {
            self.pos += 1;
            Expr::Not(Box::new(self.not()?))
        } else if self.peek() == Some(&Token::Open) {
            let open = self.at();
            self.pos += 1;
            let inner = self.or()?;
            if self.peek() != Some(&Token::Close) {
                return Err(format!(
                    "at {}: expected `)` to close the `(` at {open}",
                    self.at()
                ));
            }
            self.pos += 1;
            inner
        } else {
            self.comparison()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Token::Op(op)) => *op,
            _ => {
                return Err(format!(
                    "at {}: expected a comparison (==, !=, <, <=, >, >=)",
                    self.at()
                ));
            }
        };
        self.pos += 1;
        let right = self.operand()?;
        Ok(Expr::Cmp(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, String> {
        let at = self.at();
        let Some((_, token)) = self.tokens.get(self.pos).cloned() else {
            return Err(format!("at {at}: expected a field or a value"));
        };
        self.pos += 1;
        Ok(match token {
            Token::Num(n) => Operand::Num(n),
            Token::Str(s) => Operand::Str(s),
            Token::Ident(w) if w == "true" => Operand::Bool(true),
            Token::Ident(w) if w == "false" => Operand::Bool(false),
            Token::Ident(w) if w == "null" => Operand::Null,
            Token::Ident(w) => {
                Path::parse(&w).map_err(|e| format!("at {at}: {e}"))?;
                let i = match self.fields.iter().position(|f| *f == w) {
                    Some(i) => i,
                    None => {
                        self.fields.push(w.clone());
                        self.fields.len() - 1
                    }
                };
                Operand::Field(i, w)
            }
            other => {
                return Err(format!(
                    "at {at}: expected a field or a value, found {other:?}"
                ));
            }
        })
    }
}

impl Expr {
    /// Parses a filter; the error says where it is wrong.
    pub fn parse(src: &str) -> Result<Expr, String> {
        Self::parse_with_fields(src).map(|(e, _)| e)
    }

    /// Parses a filter and lists the fields it reads (in [`Operand::Field`] index order).
    pub fn parse_with_fields(src: &str) -> Result<(Expr, Vec<String>), String> {
        let err = |e: String| format!("filter `{src}`: {e}");
        if src.len() > MAX_LEN {
            return Err(err(format!("longer than {MAX_LEN} bytes")));
        }
        let tokens = tokenize(src).map_err(err)?;
        if tokens.is_empty() {
            return Err(err("it is empty".into()));
        }
        let mut p = Parser {
            tokens,
            pos: 0,
            end: src.len(),
            fields: Vec::new(),
            depth: 0,
        };
        let e = p.or().map_err(err)?;
        if p.pos != p.tokens.len() {
            return Err(err(format!(
                "at {}: unexpected text after the expression",
                p.at()
            )));
        }
        Ok((e, p.fields))
    }

    /// Renumbers the fields it reads (e.g. to a caller's slots of extracted values).
    pub fn map_fields(&mut self, f: &impl Fn(usize) -> usize) {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.map_fields(f);
                b.map_fields(f);
            }
            Expr::Not(a) => a.map_fields(f),
            Expr::Cmp(l, _, r) => {
                for o in [l, r] {
                    if let Operand::Field(i, _) = o {
                        *i = f(*i);
                    }
                }
            }
        }
    }

    /// Evaluates against the values of the expression's fields (by field number).
    pub fn eval(&self, fields: &[Option<Scalar<'_>>]) -> bool {
        match self {
            Expr::And(a, b) => a.eval(fields) && b.eval(fields),
            Expr::Or(a, b) => a.eval(fields) || b.eval(fields),
            Expr::Not(a) => !a.eval(fields),
            Expr::Cmp(l, op, r) => compare(resolve(l, fields), *op, resolve(r, fields)),
        }
    }
}

enum Value<'v> {
    Num(f64),
    Str(&'v str),
    Bool(bool),
    Null,
    Missing,
}

fn resolve<'v>(o: &'v Operand, fields: &'v [Option<Scalar<'_>>]) -> Value<'v> {
    match o {
        Operand::Num(n) => Value::Num(*n),
        Operand::Str(s) => Value::Str(s),
        Operand::Bool(b) => Value::Bool(*b),
        Operand::Null => Value::Null,
        Operand::Field(i, _) => match fields.get(*i) {
            Some(Some(Scalar::Num(n))) => Value::Num(*n),
            Some(Some(Scalar::Str(s))) => Value::Str(s),
            Some(Some(Scalar::Bool(b))) => Value::Bool(*b),
            Some(Some(Scalar::Null)) => Value::Null,
            _ => Value::Missing,
        },
    }
}

fn compare(l: Value<'_>, op: Op, r: Value<'_>) -> bool {
    use std::cmp::Ordering;
    let ord = match (l, r) {
        (Value::Num(a), Value::Num(b)) => a.partial_cmp(&b),
        (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(&b)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    };
    match (ord, op) {
        (None, _) => false,
        (Some(o), Op::Eq) => o == Ordering::Equal,
        (Some(o), Op::Ne) => o != Ordering::Equal,
        (Some(o), Op::Lt) => o == Ordering::Less,
        (Some(o), Op::Le) => o != Ordering::Greater,
        (Some(o), Op::Gt) => o == Ordering::Greater,
        (Some(o), Op::Ge) => o != Ordering::Less,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str, values: &[(&str, Scalar<'static>)]) -> bool {
        let (e, fields) = Expr::parse_with_fields(src).unwrap();
        let vals: Vec<Option<Scalar<'static>>> = fields
            .iter()
            .map(|f| values.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone()))
            .collect();
        e.eval(&vals)
    }

    #[test]
    fn evaluates_comparisons_and_logic() {
        let ev = [
            ("status", Scalar::Str("alarm".into())),
            ("temperature", Scalar::Num(31.5)),
            ("ok", Scalar::Bool(false)),
        ];
        assert!(run(r#"status == "alarm" and temperature > 30"#, &ev));
        assert!(!run(r#"status == "alarm" and temperature > 40"#, &ev));
        assert!(run(r#"status == 'x' or temperature >= 31.5"#, &ev));
        assert!(run(r#"not (status != "alarm") && ok == false"#, &ev));
        assert!(run(r#"!(temperature < 0) || missing == 1"#, &ev));
        // Missing fields and mixed types compare false, both ways.
        assert!(!run("missing == 1", &ev));
        assert!(!run("missing != 1", &ev));
        assert!(!run("status > 3", &ev));
        assert!(run("temperature > -1e3", &ev));
        assert!(run("AND_x == null or temperature == 31.5", &ev));
    }

    #[test]
    fn malformed_filters_say_where() {
        for (src, says) in [
            ("status ==", "expected a field or a value"),
            ("(a == 1", "expected `)`"),
            ("a == 1)", "unexpected text"),
            ("a 1", "expected a comparison"),
            ("a == 'x", "unterminated"),
            ("a == 1 and", "expected a field"),
            ("", "empty"),
            ("a == #", "unexpected `#`"),
            ("a..b == 1", "empty part"),
        ] {
            let e = Expr::parse(src).unwrap_err();
            assert!(e.contains(says), "{src}: {e}");
        }
        let deep = format!("{}a == 1{}", "(".repeat(100), ")".repeat(100));
        assert!(Expr::parse(&deep).unwrap_err().contains("nested deeper"));
    }
}
