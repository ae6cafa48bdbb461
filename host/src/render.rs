//! Human-readable rendering of JSON results, without knowing what they mean: objects become
//! aligned `Key: value` lines, arrays of objects become tables, nested values are indented.
//! Colour is used only when allowed (TTY, no `NO_COLOR`, no `--no-color`). Every string from a
//! plugin (keys, values, cells, column titles) passes through [`crate::sanitize`] first: one-line
//! places escape every control character, multi-line values keep only `\n` and `\t`.

use crate::labels::{Field, Shape};
use crate::sanitize;
use serde_json::Value;
use std::fmt::Write as _;

/// ANSI styling that is a no-op when colour is off, and the width output must fit in.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Whether to emit escape codes.
    pub color: bool,
    /// The width tables are fitted to (`None`: unlimited); see [`crate::table::output_width`].
    pub width: Option<usize>,
}

impl Style {
    /// Colour as given, width from `COLUMNS` or the terminal.
    pub fn new(color: bool) -> Self {
        Self {
            color,
            width: crate::table::output_width(),
        }
    }
    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    /// Bold (headings, keys).
    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
    /// Green (healthy).
    pub fn green(self, text: &str) -> String {
        self.paint("32", text)
    }
    /// Yellow (warnings).
    pub fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }
    /// Red (failures).
    pub fn red(self, text: &str) -> String {
        self.paint("31", text)
    }
    /// Dim (secondary detail).
    pub fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }
}

/// A scalar as a short one-line string (control characters escaped); composite values as compact
/// JSON.
pub fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => sanitize::line(s).into_owned(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            items.iter().map(scalar).collect::<Vec<_>>().join(", ")
        }
        other => sanitize::json(other),
    }
}

/// A value on its own line(s): like [`scalar`], but a multi-line string keeps its line breaks.
fn block(value: &Value) -> String {
    match value {
        Value::String(s) => sanitize::text(s).into_owned(),
        other => scalar(other),
    }
}

/// Renders a table with left-aligned columns (cells and titles with control characters escaped),
/// fitted to `style.width` by wrapping the widest columns ([`crate::table`]).
pub fn table(style: Style, columns: &[String], rows: &[Vec<String>]) -> String {
    // Upper-cased before escaping, so the escapes themselves (`\e`, `\x07`) stay as they are.
    let columns: Vec<String> = columns
        .iter()
        .map(|c| sanitize::line(&c.to_uppercase()).into_owned())
        .collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| sanitize::line(c).into_owned()).collect())
        .collect();
    let mut natural: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if i < natural.len() {
                natural[i] = natural[i].max(cell.chars().count());
            }
        }
    }
    let widths = crate::table::fit(&natural, style.width);
    let line = |cells: &[String], heading: bool| {
        let wrapped: Vec<Vec<String>> = cells
            .iter()
            .take(widths.len())
            .enumerate()
            .map(|(i, cell)| crate::table::wrap(cell, widths[i]))
            .collect();
        let height = wrapped.iter().map(Vec::len).max().unwrap_or(1);
        let mut out = String::new();
        for n in 0..height {
            let mut text = String::new();
            for (i, lines) in wrapped.iter().enumerate() {
                let cell = lines.get(n).map_or("", String::as_str);
                let padded = if i + 1 == wrapped.len() {
                    cell.to_owned()
                } else {
                    format!("{cell:<width$}  ", width = widths[i])
                };
                text.push_str(&if heading { style.bold(&padded) } else { padded });
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    };
    let mut out = line(&columns, true);
    for row in &rows {
        out.push_str(&line(row, false));
    }
    out
}

/// Renders any JSON result for a person; keys are humanised (no schema says which are data).
pub fn value(style: Style, value: &Value) -> String {
    value_with(style, value, None)
}

/// Renders a result for a person, with field labels from its `schema` ([`crate::labels`]): keys
/// of data maps stay as they are. Nulls and empty lists of values are left out.
pub fn value_with(style: Style, value: &Value, schema: Option<&Value>) -> String {
    let mut out = String::new();
    render(style, value, Shape::of(schema), 0, &mut out);
    out
}

/// Whether a list of values reads better one per line: sentences, or too long for one line.
fn one_per_line(style: Style, items: &[Value], indent: usize) -> bool {
    let joined: usize = items.iter().map(|i| scalar(i).chars().count() + 2).sum();
    items
        .iter()
        .any(|i| i.as_str().is_some_and(|s| s.trim().contains(' ')))
        || style.width.is_some_and(|w| joined + indent + 20 > w)
}

/// Whether a key's value is left out of human output: nothing to show.
fn empty(v: &Value) -> bool {
    v.is_null()
        || v.as_object().is_some_and(serde_json::Map::is_empty)
        || v.as_array().is_some_and(Vec::is_empty)
}

fn render(style: Style, value: &Value, shape: Shape<'_>, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Null => {}
        Value::Object(map) if map.is_empty() => {}
        Value::Object(map) => {
            let shown: Vec<(&Value, Field<'_>)> = map
                .iter()
                .filter(|(_, v)| !empty(v))
                .map(|(k, v)| (v, shape.field(k)))
                .collect();
            let width = shown
                .iter()
                .map(|(_, f)| sanitize::line(&f.label).chars().count())
                .max()
                .unwrap_or(0)
                + 1;
            for (v, field) in shown {
                let label = format!("{}:", sanitize::line(&field.label));
                match v {
                    Value::Object(_) => {
                        let _ = writeln!(out, "{pad}{}", style.bold(&label));
                        render(style, v, field.shape, indent + 2, out);
                    }
                    Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
                        let _ = writeln!(out, "{pad}{}", style.bold(&label));
                        render(style, v, field.shape, indent + 2, out);
                    }
                    Value::Array(items) if one_per_line(style, items, indent) => {
                        let _ = writeln!(out, "{pad}{}", style.bold(&label));
                        for item in items {
                            let _ = writeln!(out, "{pad}  {}", scalar(item));
                        }
                    }
                    _ => {
                        let _ = writeln!(
                            out,
                            "{pad}{} {}",
                            style.bold(&format!("{label:<width$}")),
                            block(v)
                        );
                    }
                }
            }
        }
        Value::Array(items) if items.is_empty() => {
            let _ = writeln!(out, "{pad}{}", style.dim("(none)"));
        }
        Value::Array(items) if items.iter().all(Value::is_object) => {
            let mut columns: Vec<String> = Vec::new();
            for item in items {
                if let Value::Object(map) = item {
                    for key in map.keys() {
                        if !columns.contains(key) {
                            columns.push(key.clone());
                        }
                    }
                }
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| {
                    columns
                        .iter()
                        .map(|c| item.get(c).map_or_else(String::new, scalar))
                        .collect()
                })
                .collect();
            let items_shape = shape.items();
            let titles: Vec<String> = columns.iter().map(|c| items_shape.field(c).label).collect();
            let inner = Style {
                width: style.width.map(|w| w.saturating_sub(indent)),
                ..style
            };
            for line in table(inner, &titles, &rows).lines() {
                let _ = writeln!(out, "{pad}{line}");
            }
        }
        Value::Array(items) => {
            for item in items {
                if item.is_object() || item.is_array() {
                    render(style, item, shape.items(), indent, out);
                } else {
                    let _ = writeln!(out, "{pad}{}", scalar(item));
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", block(other));
        }
    }
}

/// One line for a streamed item: `key=value` pairs for objects.
pub fn inline(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{}={}", sanitize::line(k), scalar(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_and_tables() {
        let plain = Style {
            color: false,
            width: None,
        };
        let text = value(plain, &json!({"greeting": "hi", "count_total": 2}));
        assert_eq!(
            text, "Greeting:    hi\nCount total: 2\n",
            "keys keep their order"
        );
        let text = value(
            plain,
            &json!([{"name": "web", "port": 80}, {"name": "dns", "port": 53}]),
        );
        assert_eq!(text, "NAME  PORT\nweb   80\ndns   53\n");
        assert_eq!(value(plain, &json!("just text")), "just text\n");
        assert_eq!(inline(&json!({"n": 1, "ok": true})), "n=1 ok=yes");
    }
}
