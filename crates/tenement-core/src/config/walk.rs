//! Walks a spanned TOML table field by field, collecting every problem instead of stopping at
//! the first (serde's `deny_unknown_fields` would report one error and give up).

use std::path::Path;

use toml_span::Span;
use toml_span::value::{Table, Value, ValueInner};

use super::error::{ConfigError, line_col};

/// Collects errors with their location.
pub(crate) struct Ctx<'a> {
    pub src: &'a str,
    pub file: &'a Path,
    pub errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    pub fn error(&mut self, span: Span, field: &str, message: impl Into<String>) {
        let (line, column) = line_col(self.src, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        });
    }
}

/// The fields of one table, taken one by one; what is left over is unknown.
pub(crate) struct Fields<'de> {
    pub prefix: String,
    pub span: Span,
    table: Table<'de>,
}

impl<'de> Fields<'de> {
    /// Opens `value` as a table; reports and returns `None` if it is not one.
    pub fn open(ctx: &mut Ctx<'_>, prefix: &str, mut value: Value<'de>) -> Option<Self> {
        let span = value.span;
        match value.take() {
            ValueInner::Table(table) => Some(Self {
                prefix: prefix.to_owned(),
                span,
                table,
            }),
            other => {
                ctx.error(
                    span,
                    prefix,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn field(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Where `name`'s value is, if the table has it (still there to take).
    pub fn span_of(&self, name: &str) -> Option<Span> {
        self.table
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v.span)
    }

    pub fn take(&mut self, name: &str) -> Option<Value<'de>> {
        self.table.remove(name)
    }

    /// Removes and returns every remaining entry (for maps with user-chosen keys).
    pub fn drain(&mut self) -> Vec<(String, Span, Value<'de>)> {
        std::mem::take(&mut self.table)
            .into_iter()
            .map(|(k, v)| (k.name.into_owned(), k.span, v))
            .collect()
    }

    /// Reports every field nobody took.
    pub fn finish(self, ctx: &mut Ctx<'_>, known: &[&str]) {
        for (key, _) in self.table {
            let field = if self.prefix.is_empty() {
                key.name.to_string()
            } else {
                format!("{}.{}", self.prefix, key.name)
            };
            ctx.error(
                key.span,
                &field,
                format!(
                    "unknown field `{}`, expected one of: {}",
                    key.name,
                    known.join(", ")
                ),
            );
        }
    }

    pub fn string(&mut self, ctx: &mut Ctx<'_>, name: &str) -> Option<(String, Span)> {
        let field = self.field(name);
        let value = self.take(name)?;
        expect_string(ctx, &field, value)
    }

    pub fn bool(&mut self, ctx: &mut Ctx<'_>, name: &str) -> Option<bool> {
        let field = self.field(name);
        let mut value = self.take(name)?;
        let span = value.span;
        match value.take() {
            ValueInner::Boolean(b) => Some(b),
            other => {
                ctx.error(
                    span,
                    &field,
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn int(
        &mut self,
        ctx: &mut Ctx<'_>,
        name: &str,
        min: i64,
        max: i64,
    ) -> Option<(i64, Span)> {
        let field = self.field(name);
        let mut value = self.take(name)?;
        let span = value.span;
        match value.take() {
            ValueInner::Integer(n) if (min..=max).contains(&n) => Some((n, span)),
            ValueInner::Integer(n) => {
                ctx.error(
                    span,
                    &field,
                    format!("{n} is out of range ({min} to {max})"),
                );
                None
            }
            other => {
                ctx.error(
                    span,
                    &field,
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn strings(&mut self, ctx: &mut Ctx<'_>, name: &str) -> Option<Vec<(String, Span)>> {
        let field = self.field(name);
        let value = self.take(name)?;
        expect_strings(ctx, &field, value)
    }

    /// A sub-table.
    pub fn table(&mut self, ctx: &mut Ctx<'_>, name: &str) -> Option<Fields<'de>> {
        let field = self.field(name);
        let value = self.take(name)?;
        Fields::open(ctx, &field, value)
    }
}

pub(crate) fn expect_string(
    ctx: &mut Ctx<'_>,
    field: &str,
    value: Value<'_>,
) -> Option<(String, Span)> {
    expect_text(ctx, field, value, false)
}

/// A string, or a number or boolean taken as written (`WORKERS = 4` in an `env` table).
pub(crate) fn expect_scalar(
    ctx: &mut Ctx<'_>,
    field: &str,
    value: Value<'_>,
) -> Option<(String, Span)> {
    expect_text(ctx, field, value, true)
}

fn expect_text(
    ctx: &mut Ctx<'_>,
    field: &str,
    mut value: Value<'_>,
    scalars: bool,
) -> Option<(String, Span)> {
    let span = value.span;
    let text = match value.take() {
        ValueInner::String(s) => s.into_owned(),
        ValueInner::Integer(n) if scalars => n.to_string(),
        ValueInner::Float(x) if scalars => x.to_string(),
        ValueInner::Boolean(b) if scalars => b.to_string(),
        other => {
            let want = if scalars {
                "a string, number or boolean"
            } else {
                "a string"
            };
            ctx.error(
                span,
                field,
                format!("expected {want}, found {}", other.type_str()),
            );
            return None;
        }
    };
    Some((text, span))
}

pub(crate) fn expect_strings(
    ctx: &mut Ctx<'_>,
    field: &str,
    mut value: Value<'_>,
) -> Option<Vec<(String, Span)>> {
    let span = value.span;
    match value.take() {
        ValueInner::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.into_iter().enumerate() {
                match expect_string(ctx, &format!("{field}[{i}]"), item) {
                    Some(s) => out.push(s),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        other => {
            ctx.error(
                span,
                field,
                format!("expected an array of strings, found {}", other.type_str()),
            );
            None
        }
    }
}
