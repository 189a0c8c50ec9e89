//! Pulls the few fields an aggregation needs out of a JSON record value in one pass, without
//! building a document: values at the wanted paths are decoded, everything else is skipped.

use std::borrow::Cow;

/// Deepest nesting walked; deeper documents are treated as malformed.
const MAX_DEPTH: usize = 64;

/// A dotted path into nested objects (`a.b.c`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path(Vec<String>);

impl Path {
    /// Parses `a.b.c`: non-empty parts of letters, digits, `_`, `-`, `@`, `$` or `:`.
    pub fn parse(text: &str) -> Result<Path, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("a field path is empty".into());
        }
        let mut parts = Vec::new();
        for part in text.split('.') {
            if part.is_empty() {
                return Err(format!("field path `{text}` has an empty part"));
            }
            if !part
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '@' | '$' | ':'))
            {
                return Err(format!(
                    "field path `{text}`: `{part}` may hold only letters, digits, _, -, @, $ and :"
                ));
            }
            parts.push(part.to_string());
        }
        Ok(Path(parts))
    }
}

/// A JSON value found at a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    /// A number.
    Num(f64),
    /// A string (borrowed unless it had escapes).
    Str(Cow<'a, str>),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An object or array.
    Nested,
}

impl Scalar<'_> {
    /// The text a group-by uses: strings as they are, other scalars as JSON writes them.
    pub fn group_text(&self) -> String {
        match self {
            Scalar::Str(s) => s.to_string(),
            Scalar::Num(n) => format_number(*n),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Null => "null".into(),
            Scalar::Nested => "{…}".into(),
        }
    }
}

/// Numbers as JSON writes them: integers without a fraction.
pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// Finds the values of `paths` in `doc`. `out[i]` is the value at `paths[i]` (`None` when
/// absent). Returns `false` when `doc` is not a JSON object (or is malformed before all
/// values were found).
pub fn extract<'a>(doc: &'a [u8], paths: &[Path], out: &mut Vec<Option<Scalar<'a>>>) -> bool {
    out.clear();
    out.resize(paths.len(), None);
    let mut p = Parser { b: doc, i: 0 };
    p.ws();
    if p.peek() != Some(b'{') {
        return false;
    }
    const ALL: [usize; 32] = {
        let mut a = [0; 32];
        let mut i = 0;
        while i < 32 {
            a[i] = i;
            i += 1;
        }
        a
    };
    let owned: Vec<usize>;
    let wanted: &[usize] = if paths.len() <= ALL.len() {
        &ALL[..paths.len()]
    } else {
        owned = (0..paths.len()).collect();
        &owned
    };
    p.object(paths, wanted, 0, out).is_some()
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek() == Some(c)).then(|| self.i += 1)
    }

    /// An object at `self.i`; `wanted` are the paths whose first `depth` parts led here.
    fn object(
        &mut self,
        paths: &[Path],
        wanted: &[usize],
        depth: usize,
        out: &mut [Option<Scalar<'a>>],
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.items(b'{', b'}', |p| p.member(paths, wanted, depth, out))
    }

    /// One `"key": value` member of an object (see [`Parser::object`]).
    fn member(
        &mut self,
        paths: &[Path],
        wanted: &[usize],
        depth: usize,
        out: &mut [Option<Scalar<'a>>],
    ) -> Option<()> {
        self.ws();
        let key = self.key()?;
        self.eat(b':')?;
        self.ws();
        // Which wanted paths go through this key: most keys match none (skipped), and
        // a matching path usually ends here (no allocation on either path). Keys are
        // compared as bytes: a path is valid UTF-8, so a match is too.
        let through = |w: &usize| {
            paths[*w]
                .0
                .get(depth)
                .is_some_and(|k| k.as_bytes() == &*key)
        };
        let ends = |w: &usize| through(w) && paths[*w].0.len() == depth + 1;
        let deeper = |w: &usize| through(w) && paths[*w].0.len() > depth + 1;
        let (mut ends_here, mut goes_deeper) = (false, false);
        for w in wanted {
            if through(w) {
                if paths[*w].0.len() == depth + 1 {
                    ends_here = true;
                } else {
                    goes_deeper = true;
                }
            }
        }
        if !ends_here && !goes_deeper {
            self.skip(depth)?;
            return Some(());
        }
        let value = if goes_deeper && self.peek() == Some(b'{') {
            let next: Vec<usize> = wanted.iter().copied().filter(deeper).collect();
            self.object(paths, &next, depth + 1, out)?;
            // A path that also ends here gets the nested object.
            Scalar::Nested
        } else {
            self.value(depth)?
        };
        for w in wanted.iter().filter(|w| ends(w)) {
            out[*w] = Some(value.clone());
        }
        Some(())
    }

    /// `open item (, item)* close` or `open close`, with whitespace anywhere.
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A value, decoded when scalar.
    fn value(&mut self, depth: usize) -> Option<Scalar<'a>> {
        self.ws();
        Some(match self.peek()? {
            b'"' => Scalar::Str(self.string()?),
            b'{' | b'[' => {
                self.skip(depth)?;
                Scalar::Nested
            }
            b't' => {
                self.literal(b"true")?;
                Scalar::Bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                Scalar::Bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                Scalar::Null
            }
            _ => Scalar::Num(self.number()?),
        })
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    fn number(&mut self) -> Option<f64> {
        let start = self.i;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        text.parse::<f64>().ok().filter(|n| n.is_finite())
    }

    /// A string at `self.i` (after whitespace), unescaped only when it holds escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        match self.key()? {
            Cow::Borrowed(raw) => std::str::from_utf8(raw).ok().map(Cow::Borrowed),
            // Unescaped by serde_json into a String: valid UTF-8.
            Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
        }
    }

    /// A string's bytes (an object member's name): borrowed, not checked for UTF-8 (a name is
    /// only compared with wanted names), unless it holds escapes.
    fn key(&mut self) -> Option<Cow<'a, [u8]>> {
        self.ws();
        if self.peek() != Some(b'"') {
            return None;
        }
        self.i += 1;
        let start = self.i;
        let escaped = self.seek_closing_quote()?;
        let raw = self.b.get(start..self.i)?;
        self.i += 1;
        if !escaped {
            return Some(Cow::Borrowed(raw));
        }
        // Rare: let serde_json do the unescaping (including surrogate pairs).
        let quoted = self.b.get(start - 1..self.i)?;
        serde_json::from_slice::<String>(quoted)
            .ok()
            .map(|k| Cow::Owned(k.into_bytes()))
    }

    /// Moves to the quote that closes the string the cursor is in; whether it held escapes.
    fn seek_closing_quote(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..)?;
            self.i += memchr::memchr2(b'"', b'\\', rest)?;
            if self.b[self.i] == b'"' {
                return Some(escaped);
            }
            escaped = true;
            self.i += 2;
        }
    }

    /// Skips any value.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.seek_closing_quote()?;
                self.i += 1;
                Some(())
            }
            b'{' => self.items(b'{', b'}', |p| {
                p.string()?;
                p.eat(b':')?;
                p.skip(depth + 1)
            }),
            b'[' => self.items(b'[', b']', |p| p.skip(depth + 1)),
            _ => self.value(depth).map(|_| ()),
        }
    }
}

/// Event time in epoch milliseconds from a JSON value: an RFC 3339 string, or a number of
/// milliseconds (seconds when its magnitude is below 10^11, i.e. before 1973 as ms).
pub fn event_time(value: &Scalar<'_>) -> Result<i64, &'static str> {
    match value {
        Scalar::Num(n) => {
            let ms = if n.abs() < 1e11 { n * 1000.0 } else { *n };
            if ms.abs() > 1e16 {
                return Err("time out of range");
            }
            Ok(ms.floor() as i64)
        }
        Scalar::Str(s) => parse_rfc3339(s).ok_or("time is not RFC 3339"),
        _ => Err("time is not a string or number"),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM)` (a space or `t` for `T`, `z` for `Z`) to epoch ms.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (hours, minutes) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let m = hours * 60 + minutes;
            if *sign == b'+' { m } else { -m }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// The number of days of `month` (1–12) in `year` of the proleptic Gregorian calendar.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(doc: &'a str, paths: &[&str]) -> Option<Vec<Option<Scalar<'a>>>> {
        let paths: Vec<Path> = paths.iter().map(|p| Path::parse(p).unwrap()).collect();
        let mut out = Vec::new();
        extract(doc.as_bytes(), &paths, &mut out).then_some(out)
    }

    #[test]
    fn finds_nested_fields_and_skips_the_rest() {
        let doc = r#"{"a": [1, {"x": "}"}], "s": "t\"x", "n": {"m": {"k": -1.5e2}, "z": null},
                     "b": true, "u": "caf\u00e9"}"#;
        let out = get(
            doc,
            &[
                "n.m.k",
                "s",
                "b",
                "missing",
                "n.z",
                "u",
                "a",
                "n.m.k.deeper",
            ],
        )
        .unwrap();
        assert_eq!(out[0], Some(Scalar::Num(-150.0)));
        assert_eq!(out[1], Some(Scalar::Str("t\"x".into())));
        assert_eq!(out[2], Some(Scalar::Bool(true)));
        assert_eq!(out[3], None);
        assert_eq!(out[4], Some(Scalar::Null));
        assert_eq!(out[5], Some(Scalar::Str("café".into())));
        assert_eq!(out[6], Some(Scalar::Nested));
        assert_eq!(out[7], None);
        // Values serde_json agrees on.
        for doc in [
            r#"{"k": 12}"#,
            r#"{"k": "v"}"#,
            r#"{"x": {"y": [1,2]}, "k": 0.25}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(doc).unwrap();
            let out = get(doc, &["k"]).unwrap();
            match &v["k"] {
                serde_json::Value::Number(n) => {
                    assert_eq!(out[0], Some(Scalar::Num(n.as_f64().unwrap())))
                }
                serde_json::Value::String(s) => {
                    assert_eq!(out[0], Some(Scalar::Str(s.clone().into())))
                }
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn malformed_and_hostile_documents_are_refused_not_panicked_on() {
        for doc in [
            "",
            "[1]",
            "{",
            r#"{"a" 1}"#,
            r#"{"a": tru}"#,
            r#"{"a": "x"#,
            "{\"a\": \"\\",
        ] {
            assert!(
                get(doc, &["a"]).is_none() || get(doc, &["a"]).unwrap()[0].is_none(),
                "{doc}"
            );
        }
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(get(&deep, &["b"]).is_none());
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.789Z"),
            Some(1_709_210_096_789)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T14:34:56.7+02:00"),
            Some(1_709_210_096_700)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29 12:34:56z"),
            Some(1_709_210_096_000)
        );
        for bad in [
            "2024-13-01T00:00:00Z",
            "2024-02-31T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00+01:60",
            "2024-02-29",
            "2024-02-29T12:34:56",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        // Every day of a few years, leap and not, follows the day before by 86,400 s; the
        // day after a month's last is refused.
        for year in [1900, 1999, 2000, 2023, 2024, 2100] {
            let mut previous = None;
            for month in 1..=12 {
                for day in 1..=31 {
                    let text = format!("{year:04}-{month:02}-{day:02}T00:00:00Z");
                    let Some(ms) = parse_rfc3339(&text) else {
                        assert!(day > 28, "{text} refused");
                        continue;
                    };
                    if let Some(p) = previous {
                        assert_eq!(ms - p, 86_400_000, "{text}");
                    }
                    previous = Some(ms);
                }
            }
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let feb29 = format!("{year:04}-02-29T00:00:00Z");
            assert_eq!(parse_rfc3339(&feb29).is_some(), leap, "{feb29}");
        }
        assert_eq!(
            event_time(&Scalar::Num(1_700_000_000.5)),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            event_time(&Scalar::Num(1_700_000_000_123.0)),
            Ok(1_700_000_000_123)
        );
        assert!(event_time(&Scalar::Bool(true)).is_err());
    }
}
