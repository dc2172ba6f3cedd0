//! Small helpers shared by every scorer's report: a Markdown table writer and Python-compatible
//! number formatting (official tools print floats with Python's `repr` / `format`, and our
//! reports reproduce their text).
//!
//! ```
//! use mde_eval::report::{markdown_table, py_float_repr};
//! let t = markdown_table(&["task", "score"], &[vec!["OCR".to_string(), py_float_repr(200.0)]]);
//! assert_eq!(t, "| task | score |\n|---|---|\n| OCR | 200.0 |\n");
//! assert_eq!(py_float_repr(1e16), "1e+16");
//! ```

/// Renders a GitHub-flavoured Markdown table. Cells are escaped (`|` becomes `\|`, line breaks
/// become spaces) so user text such as model predictions cannot break the layout. Rows shorter
/// than the header are padded with empty cells; longer rows are kept as they are.
pub fn markdown_table<H: AsRef<str>>(headers: &[H], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    out.push('|');
    for h in headers {
        out.push(' ');
        out.push_str(&escape_cell(h.as_ref()));
        out.push_str(" |");
    }
    out.push('\n');
    out.push('|');
    for _ in headers {
        out.push_str("---|");
    }
    out.push('\n');
    for row in rows {
        out.push('|');
        let n = row.len().max(headers.len());
        for i in 0..n {
            out.push(' ');
            out.push_str(&escape_cell(row.get(i).map(String::as_str).unwrap_or("")));
            out.push_str(" |");
        }
        out.push('\n');
    }
    out
}

fn escape_cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

pub use crate::matching::{py_is_space as is_py_space, py_split_whitespace};
pub use crate::tsv::py_float_repr;

/// Python's `f"{x:.{prec}f}"` (correctly rounded, half-even on exact ties, as Rust's `{:.prec$}`
/// is since 1.67), with Python's spelling of NaN and infinities.
pub fn py_fixed(x: f64, prec: usize) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    format!("{:.*}", prec, x)
}

/// A string-keyed map that keeps insertion order when serialised (serde_json's `Map` sorts keys
/// unless its `preserve_order` feature is on; official tools print columns in a meaningful order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> OrderedMap<V> {
    /// Empty map.
    pub fn new() -> Self {
        OrderedMap(Vec::new())
    }
    /// Value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// Inserts or replaces (keeping the first position, like a Python dict).
    pub fn insert(&mut self, key: impl Into<String>, value: V) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: serde::Serialize> serde::Serialize for OrderedMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = OrderedMap::new();
                while let Some((k, v)) = a.next_entry::<String, V>()? {
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python() {
        for (x, s) in [
            (200.0, "200.0"),
            (1387.5, "1387.5"),
            (1096.6666666666665, "1096.6666666666665"),
            (48.148148148148145, "48.148148148148145"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (9999999999999998.0, "9999999999999998.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (1e22, "1e+22"),
        ] {
            assert_eq!(py_float_repr(x), s, "{x:e}");
        }
    }

    #[test]
    fn fixed_rounds_half_even_on_exact_ties() {
        assert_eq!(py_fixed(12.125, 2), "12.12");
        assert_eq!(py_fixed(12.375, 2), "12.38");
        assert_eq!(py_fixed(67.77777777777779, 2), "67.78");
    }

    #[test]
    fn table_escapes_cells() {
        let t = markdown_table(&["a"], &[vec!["x|y\nz".into()]]);
        assert_eq!(t, "| a |\n|---|\n| x\\|y z |\n");
    }
}
