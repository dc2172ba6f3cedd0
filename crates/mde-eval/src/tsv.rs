//! A TSV reader/writer with the semantics of `pandas.read_csv(path, sep='\t')` (pandas 2.x, C
//! parser, default options) and of `DataFrame.to_csv(sep='\t')`, which is how VLMEvalKit reads and
//! writes every benchmark and prediction file.
//!
//! What is emulated (SPEC §1.1):
//! - quote char `"`, doubled `""` inside quoted fields, quoted TAB / newline, `\n`, `\r\n` and `\r`
//!   line ends, a leading UTF-8 BOM, blank (and space-only) lines skipped;
//! - pandas' default NA strings (quoted or not, exact match, no trimming);
//! - per-column dtype inference: int64, float64 (ints + NaN, or decimals), bool, object;
//! - Python `str()` of a cell after that inference (`"3"`, `"3.0"`, `"nan"`, `"True"`, text as is),
//!   including Python's float `repr` (`1e+16`, `1e-05`, ...).
//!
//! ```no_run
//! use mde_eval::tsv::read_tsv;
//! let t = read_tsv(std::path::Path::new("MMBench_DEV_EN.tsv")).unwrap();
//! let idx = t.col("index").unwrap();
//! for r in 0..t.nrows() {
//!     println!("{}", t.py_str(r, idx));
//! }
//! ```
use crate::error::EvalError;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// pandas' default NA strings (`pandas._libs.parsers.STR_NA_VALUES`, pandas >= 2.0 incl. `"None"`).
pub const PANDAS_NA_STRINGS: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// True when `s` is one of pandas' default NA strings (exact match).
pub fn is_na_string(s: &str) -> bool {
    s.len() <= 8 && PANDAS_NA_STRINGS.contains(&s)
}

impl EvalError {
    fn with_path(self, p: &Path) -> Self {
        match self {
            EvalError::Line { line, msg, .. } => EvalError::Line {
                path: p.into(),
                line,
                msg,
            },
            EvalError::File { msg, .. } => EvalError::File {
                path: p.into(),
                msg,
            },
            e => e,
        }
    }
}

/// The dtype pandas infers for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ColumnKind {
    /// int64: every value parses as an integer and there is no NaN.
    Int,
    /// float64: numbers with a NaN or a decimal; also an all-NaN column.
    Float,
    /// bool (`True`/`False`/`TRUE`/`true`/...); with a NaN pandas keeps Python bools in an object
    /// column, which `str()`s the same way.
    Bool,
    /// object: the text as written.
    Str,
}

/// A parsed table. Cells are kept as the original text (`None` = NaN); typed views are derived
/// from [`ColumnKind`].
#[derive(Debug, Clone)]
pub struct Table {
    /// Column names after pandas' header handling (`Unnamed: i`, duplicate `x.1`).
    pub columns: Vec<String>,
    /// The file text followed by the unescaped copies of fields that needed unescaping.
    buf: String,
    /// Per cell, a byte range of `buf`; `NA_CELL` = NaN.
    cells: Vec<(usize, usize)>,
    /// 1-based line number (in the file) where each data row starts.
    lines: Vec<usize>,
    kinds: Vec<ColumnKind>,
    nrows: usize,
    /// Source name for error messages.
    pub source: PathBuf,
}

impl Table {
    /// Number of data rows.
    pub fn nrows(&self) -> usize {
        self.nrows
    }
    /// Number of columns.
    pub fn ncols(&self) -> usize {
        self.columns.len()
    }
    /// Position of the column named exactly `name`.
    pub fn col(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
    /// True when the cell is NaN.
    pub fn is_na(&self, row: usize, col: usize) -> bool {
        self.cells[row * self.columns.len() + col].0 == NA_CELL.0
    }
    /// The cell's text as written (unquoted); `None` = NaN.
    pub fn raw(&self, row: usize, col: usize) -> Option<&str> {
        let (a, b) = self.cells[row * self.columns.len() + col];
        if a == NA_CELL.0 {
            None
        } else {
            Some(&self.buf[a..b])
        }
    }
    /// The inferred dtype of a column.
    pub fn kind(&self, col: usize) -> ColumnKind {
        self.kinds[col]
    }
    /// 1-based file line where data row `row` starts (for error messages).
    pub fn line_of(&self, row: usize) -> usize {
        self.lines[row]
    }
    /// Python `str()` of the cell after pandas' dtype inference.
    pub fn py_str(&self, row: usize, col: usize) -> String {
        let Some(s) = self.raw(row, col) else {
            return "nan".to_string();
        };
        match self.kinds[col] {
            ColumnKind::Str => s.to_string(),
            ColumnKind::Int => parse_int(s)
                .map(|v| v.to_string())
                .unwrap_or_else(|| s.to_string()),
            ColumnKind::Float => parse_float(s)
                .map(py_float_repr)
                .unwrap_or_else(|| s.to_string()),
            ColumnKind::Bool => match parse_bool(s) {
                Some(true) => "True".to_string(),
                Some(false) => "False".to_string(),
                None => s.to_string(),
            },
        }
    }
    /// The cell as an integer if the column is int64, or float64 with an integral value.
    pub fn int(&self, row: usize, col: usize) -> Option<i64> {
        let s = self.raw(row, col)?;
        match self.kinds[col] {
            ColumnKind::Int => parse_int(s),
            ColumnKind::Float => parse_float(s)
                .filter(|v| v.fract() == 0.0 && v.abs() < 9.2e18)
                .map(|v| v as i64),
            _ => None,
        }
    }
    /// The cell as a float if the column is numeric (NaN gives `Some(NaN)`).
    pub fn float(&self, row: usize, col: usize) -> Option<f64> {
        match self.kinds[col] {
            ColumnKind::Int | ColumnKind::Float => match self.raw(row, col) {
                None => Some(f64::NAN),
                Some(s) => parse_float(s),
            },
            _ => None,
        }
    }
    /// Python `str()` of a cell by column name; `None` when the column does not exist.
    pub fn get_str(&self, row: usize, name: &str) -> Option<String> {
        self.col(name).map(|c| self.py_str(row, c))
    }
}

/// Reads a TSV file like `pandas.read_csv(path, sep='\t')`.
pub fn read_tsv(path: &Path) -> Result<Table, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::Io {
        path: path.into(),
        source: e,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| EvalError::Utf8 {
        path: path.into(),
        source: e,
    })?;
    let mut t = parse_tsv(&text).map_err(|e| e.with_path(path))?;
    t.source = path.into();
    Ok(t)
}

/// Parses TSV text like `pandas.read_csv(io.StringIO(text), sep='\t')`.
pub fn parse_tsv(text: &str) -> Result<Table, EvalError> {
    let src = PathBuf::from("<string>");
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut tok = Tokenizer {
        extra: String::new(),
        s: text.as_bytes(),
        text,
        pos: 0,
        line: 1,
    };
    let Some(_) = tok
        .next_record(&mut fields)
        .map_err(|(line, msg)| EvalError::Line {
            path: src.clone(),
            line,
            msg,
        })?
    else {
        return Err(EvalError::File {
            path: src,
            msg: "No columns to parse from file".into(),
        });
    };
    let header: Vec<String> = fields
        .iter()
        .map(|&(a, b)| tok.field(a, b).to_string())
        .collect();
    let columns = header_names(header);
    let ncols = columns.len();
    let mut cells: Vec<(usize, usize)> = Vec::new();
    let mut lines = Vec::new();
    while let Some(line) = tok
        .next_record(&mut fields)
        .map_err(|(line, msg)| EvalError::Line {
            path: src.clone(),
            line,
            msg,
        })?
    {
        if fields.len() > ncols {
            return Err(EvalError::Line {
                path: src,
                line,
                msg: format!(
                    "Error tokenizing data. Expected {ncols} fields, saw {}",
                    fields.len()
                ),
            });
        }
        let n = fields.len();
        cells.extend(fields.iter().map(|&(a, b)| {
            if is_na_string(tok.field(a, b)) {
                NA_CELL
            } else {
                (a, b)
            }
        }));
        cells.extend(std::iter::repeat_n(NA_CELL, ncols - n));
        lines.push(line);
    }
    let nrows = lines.len();
    let mut buf = String::with_capacity(text.len() + tok.extra.len());
    buf.push_str(text);
    buf.push_str(&tok.extra);
    let cell = |r: usize, c: usize| {
        let (a, b) = cells[r * ncols + c];
        (a != NA_CELL.0).then(|| &buf[a..b])
    };
    let kinds = (0..ncols)
        .map(|c| infer_kind((0..nrows).map(|r| cell(r, c))))
        .collect();
    Ok(Table {
        columns,
        buf,
        cells,
        lines,
        kinds,
        nrows,
        source: src,
    })
}

fn header_names(header: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(header.len());
    for (i, h) in header.into_iter().enumerate() {
        let mut name = if h.is_empty() {
            format!("Unnamed: {i}")
        } else {
            h
        };
        // pandas mangles duplicates as `x.1`, `x.2`, ...
        if out.contains(&name) {
            let base = name.clone();
            let mut k = 1;
            loop {
                let cand = format!("{base}.{k}");
                if !out.contains(&cand) {
                    name = cand;
                    break;
                }
                k += 1;
            }
        }
        out.push(name);
    }
    out
}

/// pandas' dtype inference over a column's cells (`None` = NaN).
pub fn infer_kind<'a>(vals: impl Iterator<Item = Option<&'a str>>) -> ColumnKind {
    let mut any_na = false;
    let mut any_val = false;
    let mut all_int = true;
    let mut all_float = true;
    let mut all_bool = true;
    for v in vals {
        match v {
            None => any_na = true,
            Some(s) => {
                any_val = true;
                if all_int && parse_int(s).is_none() {
                    all_int = false;
                }
                if !all_int && all_float && parse_float(s).is_none() {
                    all_float = false;
                }
                if all_bool && parse_bool(s).is_none() {
                    all_bool = false;
                }
                if !all_int && !all_float && !all_bool {
                    return ColumnKind::Str;
                }
            }
        }
    }
    if !any_val {
        return ColumnKind::Float;
    }
    if all_int {
        if any_na {
            ColumnKind::Float
        } else {
            ColumnKind::Int
        }
    } else if all_float {
        ColumnKind::Float
    } else {
        ColumnKind::Bool
    }
}

fn trim_ascii_space(s: &str) -> &str {
    s.trim_matches(|c: char| {
        c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\x0b' || c == '\x0c'
    })
}

/// pandas' integer parse (`xstrtoll`): optional surrounding spaces, optional sign, ASCII digits.
pub fn parse_int(s: &str) -> Option<i64> {
    let t = trim_ascii_space(s);
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    t.parse::<i64>().ok()
}

/// pandas' float parse: decimal / exponent notation, `inf`/`infinity` (any case), surrounding
/// spaces allowed.
pub fn parse_float(s: &str) -> Option<f64> {
    let t = trim_ascii_space(s);
    if t.is_empty() {
        return None;
    }
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let lower = body.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return t.parse::<f64>().ok();
    }
    // Reject what Rust accepts but pandas does not (e.g. "nan" spellings handled as NA elsewhere).
    if !body
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    if !body.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<f64>().ok()
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "True" | "TRUE" | "true" => Some(true),
        "False" | "FALSE" | "false" => Some(false),
        _ => None,
    }
}

/// Python `repr(float)` / `str(float)`: shortest round-trip digits, fixed notation when the
/// decimal exponent is in [-5, 16), otherwise `d.ddde+XX`.
pub fn py_float_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let e = format!("{v:e}");
    let (mant, exp) = e.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let decpt = exp + 1;
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else {
            let d = decpt as usize;
            if digits.len() <= d {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', d - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..d]);
                out.push('.');
                out.push_str(&digits[d..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

/// The pandas C tokenizer state machine, reduced to what `sep='\t'` with default options uses.
struct Tokenizer<'a> {
    extra: String,
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    line: usize,
}

type TokResult = Result<Option<usize>, (usize, String)>;

/// Marks a NaN cell.
const NA_CELL: (usize, usize) = (usize::MAX, 0);

impl Tokenizer<'_> {
    /// A field's text: ranges past the input point into `extra` (unescaped copies).
    fn field(&self, a: usize, b: usize) -> &str {
        let n = self.text.len();
        if a >= n {
            &self.extra[a - n..b - n]
        } else {
            &self.text[a..b]
        }
    }

    /// Next record (start line; fields as byte ranges into `fields`); blank and space-only lines
    /// are skipped.
    fn next_record(&mut self, fields: &mut Vec<(usize, usize)>) -> TokResult {
        fields.clear();
        let s = self.s;
        // Skip blank lines (pandas `skip_blank_lines=True`; whitespace-only lines count as blank).
        loop {
            if self.pos >= s.len() {
                return Ok(None);
            }
            let mut p = self.pos;
            while p < s.len() && s[p] == b' ' {
                p += 1;
            }
            if p >= s.len() {
                return Ok(None);
            }
            match s[p] {
                b'\n' => {
                    self.pos = p + 1;
                    self.line += 1;
                }
                b'\r' => {
                    self.pos = if p + 1 < s.len() && s[p + 1] == b'\n' {
                        p + 2
                    } else {
                        p + 1
                    };
                    self.line += 1;
                }
                _ => break,
            }
        }
        let start_line = self.line;
        loop {
            // START_FIELD
            if self.pos < s.len() && s[self.pos] == b'"' {
                // quoted field
                // Unescaped text is only built when the field has `""` or text after the quote.
                let mut buf = String::new();
                let mut escaped = false;
                let mut p = self.pos + 1;
                let mut seg = p;
                loop {
                    if p >= s.len() {
                        return Err((
                            start_line,
                            format!("EOF inside string starting at row {}", start_line),
                        ));
                    }
                    match s[p] {
                        b'"' => {
                            if p + 1 < s.len() && s[p + 1] == b'"' {
                                escaped = true;
                                buf.push_str(&self.text[seg..p]);
                                buf.push('"');
                                p += 2;
                                seg = p;
                            } else {
                                if escaped {
                                    buf.push_str(&self.text[seg..p]);
                                }
                                p += 1;
                                break;
                            }
                        }
                        b'\n' => {
                            self.line += 1;
                            p += 1;
                        }
                        b'\r' => {
                            if !(p + 1 < s.len() && s[p + 1] == b'\n') {
                                self.line += 1;
                            }
                            p += 1;
                        }
                        _ => p += 1,
                    }
                }
                // After the closing quote, characters up to the delimiter are appended verbatim.
                let rest = p;
                while p < s.len() && !matches!(s[p], b'\t' | b'\n' | b'\r') {
                    p += 1;
                }
                if escaped || rest < p {
                    if !escaped {
                        buf.push_str(&self.text[self.pos + 1..rest - 1]);
                    }
                    buf.push_str(&self.text[rest..p]);
                    let off = self.text.len() + self.extra.len();
                    self.extra.push_str(&buf);
                    fields.push((off, off + buf.len()));
                } else {
                    fields.push((self.pos + 1, rest - 1));
                }
                self.pos = p;
            } else {
                let mut p = self.pos;
                while p < s.len() && !matches!(s[p], b'\t' | b'\n' | b'\r') {
                    p += 1;
                }
                fields.push((self.pos, p));
                self.pos = p;
            }
            // end of field
            if self.pos >= s.len() {
                return Ok(Some(start_line));
            }
            match s[self.pos] {
                b'\t' => {
                    self.pos += 1;
                }
                b'\n' => {
                    self.pos += 1;
                    self.line += 1;
                    return Ok(Some(start_line));
                }
                _ => {
                    // '\r' or "\r\n"
                    self.pos += 1;
                    if self.pos < s.len() && s[self.pos] == b'\n' {
                        self.pos += 1;
                    }
                    self.line += 1;
                    return Ok(Some(start_line));
                }
            }
        }
    }
}

fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
}

/// Serialises rows like `df.to_csv(sep='\t', index=False, quoting=csv.QUOTE_ALL)` (VLMEvalKit's
/// `dump`): every field quoted, header included, NaN (`None`) as `""`, `\n` line ends.
pub fn to_tsv_quote_all<S: AsRef<str>>(columns: &[S], rows: &[Vec<Option<String>>]) -> String {
    let mut out = String::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        push_quoted(&mut out, c.as_ref());
    }
    out.push('\n');
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            push_quoted(&mut out, v.as_deref().unwrap_or(""));
        }
        out.push('\n');
    }
    out
}

/// Serialises rows like plain `df.to_csv(sep='\t', index=False)` (QUOTE_MINIMAL): a field is
/// quoted only when it contains TAB, `"`, `\n` or `\r` (or is the single, empty field of a row).
pub fn to_tsv_minimal<S: AsRef<str>>(columns: &[S], rows: &[Vec<Option<String>>]) -> String {
    fn field(out: &mut String, s: &str, single: bool) {
        if s.contains(['\t', '"', '\n', '\r']) || (single && s.is_empty()) {
            push_quoted(out, s);
        } else {
            out.push_str(s);
        }
    }
    let mut out = String::new();
    let single = columns.len() == 1;
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        field(&mut out, c.as_ref(), single);
    }
    out.push('\n');
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            field(&mut out, v.as_deref().unwrap_or(""), row.len() == 1);
        }
        out.push('\n');
    }
    out
}

/// Writes a QUOTE_ALL TSV atomically (see [`to_tsv_quote_all`]).
pub fn write_tsv_quote_all<S: AsRef<str>>(
    path: &Path,
    columns: &[S],
    rows: &[Vec<Option<String>>],
) -> Result<(), EvalError> {
    write_checked(path, columns.len(), rows, to_tsv_quote_all(columns, rows))
}

/// Writes a plain (QUOTE_MINIMAL) TSV atomically (see [`to_tsv_minimal`]).
pub fn write_tsv_minimal<S: AsRef<str>>(
    path: &Path,
    columns: &[S],
    rows: &[Vec<Option<String>>],
) -> Result<(), EvalError> {
    write_checked(path, columns.len(), rows, to_tsv_minimal(columns, rows))
}

fn write_checked(
    path: &Path,
    ncols: usize,
    rows: &[Vec<Option<String>>],
    text: String,
) -> Result<(), EvalError> {
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != ncols) {
        return Err(EvalError::File {
            path: path.into(),
            msg: format!("row {i} has {} fields, expected {ncols}", r.len()),
        });
    }
    mde_core::io::atomic_write(path, text.as_bytes()).map_err(|e| EvalError::File {
        path: path.into(),
        msg: e.to_string(),
    })
}

impl Table {
    /// The table without column `name`, as TSV text with minimal quoting (what a file that
    /// lacks the column looks like); `None` when there is no such column.
    pub fn to_tsv_without(&self, name: &str) -> Option<String> {
        let drop = self.col(name)?;
        let keep = |i: &usize| *i != drop;
        let cols: Vec<&String> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(i))
            .map(|(_, c)| c)
            .collect();
        let rows: Vec<Vec<Option<String>>> = self
            .raw_rows()
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .enumerate()
                    .filter(|(i, _)| keep(i))
                    .map(|(_, v)| v)
                    .collect()
            })
            .collect();
        Some(to_tsv_minimal(&cols, &rows))
    }

    /// All rows as raw cells (`None` = NaN), e.g. to write the table back.
    pub fn raw_rows(&self) -> Vec<Vec<Option<String>>> {
        (0..self.nrows)
            .map(|r| {
                (0..self.ncols())
                    .map(|c| self.raw(r, c).map(str::to_string))
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_na_and_kinds() {
        let t = parse_tsv("\u{feff}a\tb\tc\td\te\n1\t\"x\"\"y\"\t1.5\t\"NA\"\tTrue\r\n2\t\"p\tq\nr\"\t\t\" NA\"\tfalse\n\n").unwrap();
        assert_eq!(t.columns, ["a", "b", "c", "d", "e"]);
        assert_eq!(t.nrows(), 2);
        assert_eq!(t.kind(0), ColumnKind::Int);
        assert_eq!(t.kind(2), ColumnKind::Float);
        assert_eq!(t.kind(4), ColumnKind::Bool);
        assert_eq!(t.raw(0, 1), Some("x\"y"));
        assert_eq!(t.raw(1, 1), Some("p\tq\nr"));
        assert!(t.is_na(0, 3));
        assert_eq!(t.raw(1, 3), Some(" NA"));
        assert_eq!(t.py_str(1, 2), "nan");
        assert_eq!(t.py_str(0, 2), "1.5");
        assert_eq!(t.py_str(0, 4), "True");
        assert_eq!(t.line_of(1), 3);
    }

    #[test]
    fn int_with_nan_is_float() {
        let t = parse_tsv("a\tb\n3\t7\n\tx\n").unwrap();
        assert_eq!(t.py_str(0, 0), "3.0");
        assert_eq!(t.py_str(0, 1), "7");
        assert_eq!(t.kind(1), ColumnKind::Str);
    }

    #[test]
    fn float_repr() {
        for (v, s) in [
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-2.5, "-2.5"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(py_float_repr(v), s);
        }
    }

    #[test]
    fn unterminated_quote_names_line() {
        let e = parse_tsv("a\n\"x\n").unwrap_err().to_string();
        assert!(e.contains(":2:"), "{e}");
    }

    #[test]
    fn writers_roundtrip() {
        let rows = vec![
            vec![Some("a\"b".to_string()), None],
            vec![Some("x\ty".into()), Some("3".into())],
        ];
        let all = to_tsv_quote_all(&["p", "q"], &rows);
        assert_eq!(all, "\"p\"\t\"q\"\n\"a\"\"b\"\t\"\"\n\"x\ty\"\t\"3\"\n");
        let t = parse_tsv(&all).unwrap();
        assert_eq!(t.raw_rows(), rows);
        let min = to_tsv_minimal(&["p", "q"], &rows);
        assert_eq!(min, "p\tq\n\"a\"\"b\"\t\n\"x\ty\"\t3\n");
    }
}
