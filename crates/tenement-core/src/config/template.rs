//! `{placeholder}` and `${VAR}` templates in commands, args, env values and socket paths.
//!
//! `${VAR}` is read from the host environment once, when the configuration is loaded (an unset
//! variable is a configuration error naming it), except for the variables every instance is
//! given (`PORT`, `SOCKET_PATH`, `INSTANCE_ID`, `SERVICE_NAME`): those are the instance's own.
//! `{name}`-style placeholders are filled in per instance at spawn time. `{word}` with an
//! unknown word is an error; braces around anything that is not a lowercase word (JSON, say)
//! are left alone.

use serde::Serialize;

/// Values for one instance.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub name: &'a str,
    pub id: &'a str,
    pub data_dir: &'a str,
    pub socket: &'a str,
    pub port: u16,
}

/// A validated template with `${VAR}` already resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Template(String);

/// Placeholders allowed in the socket template (it cannot refer to itself).
pub const SOCKET_VARS: &[&str] = &["name", "id", "data_dir", "port"];
/// Placeholders allowed everywhere else.
pub const ALL_VARS: &[&str] = &["name", "id", "data_dir", "socket", "port"];

impl Template {
    /// Resolves `${VAR}` with `env` and checks that every `{word}` is in `allowed`.
    pub fn parse(
        raw: &str,
        allowed: &[&str],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let resolved = resolve_env(raw, env)?;
        for word in placeholders(&resolved) {
            if !allowed.contains(&word) {
                return Err(format!(
                    "unknown placeholder {{{word}}} (known: {})",
                    allowed
                        .iter()
                        .map(|v| format!("{{{v}}}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
        }
        Ok(Self(resolved))
    }

    /// A template that is used as is (no placeholders checked).
    pub fn literal(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn contains(&self, word: &str) -> bool {
        placeholders(&self.0).any(|w| w == word)
    }

    /// Fills in the placeholders for one instance.
    pub fn render(&self, v: &Vars<'_>) -> String {
        let mut out = String::with_capacity(self.0.len() + 16);
        let mut rest = self.0.as_str();
        while let Some((start, word, end)) = next_placeholder(rest) {
            out.push_str(&rest[..start]);
            match word {
                "name" => out.push_str(v.name),
                "id" => out.push_str(v.id),
                "data_dir" => {
                    out.push_str(v.data_dir);
                    // `{data_dir}/{id}` as a directory is the instance's own directory,
                    // `{data_dir}/{name}/{id}`: the only one it can write to under namespace
                    // and sandbox isolation (the spec's own `{data_dir}/{id}/app.db` example).
                    let after = &rest[end..];
                    if let Some(tail) = after.strip_prefix("/{id}")
                        && (tail.is_empty() || tail.starts_with('/'))
                    {
                        out.push('/');
                        out.push_str(v.name);
                        out.push('/');
                        out.push_str(v.id);
                        rest = tail;
                        continue;
                    }
                }
                "socket" => out.push_str(v.socket),
                "port" => out.push_str(&v.port.to_string()),
                other => {
                    out.push('{');
                    out.push_str(other);
                    out.push('}');
                }
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Finds the next `{word}`: (start, word, end) byte offsets into `s`.
fn next_placeholder(s: &str) -> Option<(usize, &str, usize)> {
    let mut from = 0;
    while let Some(open) = s[from..].find('{').map(|i| i + from) {
        if let Some(close) = s[open + 1..].find('}').map(|i| i + open + 1) {
            let word = &s[open + 1..close];
            if is_word(word) {
                return Some((open, word, close + 1));
            }
        }
        from = open + 1;
    }
    None
}

fn placeholders(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let (_, word, end) = next_placeholder(rest)?;
        rest = &rest[end..];
        Some(word)
    })
}

/// The variables every instance is given, as the placeholders of their values: `${PORT}` in
/// a command is the instance's port, never one `ten` happens to have in its own environment.
fn instance_var(name: &str) -> Option<&'static str> {
    Some(match name {
        "PORT" => "{port}",
        "SOCKET_PATH" => "{socket}",
        "INSTANCE_ID" => "{id}",
        "SERVICE_NAME" => "{name}",
        _ => return None,
    })
}

fn resolve_env(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unterminated ${ (write ${VAR})".into());
        };
        let name = &after[..end];
        let valid = name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if name.is_empty() || !valid {
            return Err(format!("invalid environment variable name ${{{name}}}"));
        }
        match (instance_var(name), env(name)) {
            (Some(placeholder), _) => out.push_str(placeholder),
            (None, Some(value)) => out.push_str(&value),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cret".to_string())
    }

    #[test]
    fn parse_and_render() {
        let vars = Vars {
            name: "api",
            id: "prod",
            data_dir: "/var/lib/t",
            socket: "/tmp/api-prod.sock",
            port: 30001,
        };
        let table = [
            ("{data_dir}/{id}/app.db", "/var/lib/t/api/prod/app.db"),
            ("{data_dir}/{id}", "/var/lib/t/api/prod"),
            ("{data_dir}/{id}.sock", "/var/lib/t/prod.sock"),
            ("{data_dir}/{name}/{id}/x", "/var/lib/t/api/prod/x"),
            ("{data_dir}/cache", "/var/lib/t/cache"),
            ("${SECRET}-{name}", "s3cret-api"),
            (
                "app --port ${PORT} --socket ${SOCKET_PATH} ${SERVICE_NAME}:${INSTANCE_ID}",
                "app --port 30001 --socket /tmp/api-prod.sock api:prod",
            ),
            ("{socket} {port}", "/tmp/api-prod.sock 30001"),
            (r#"{"json": 1}"#, r#"{"json": 1}"#),
            ("{ {id}}", "{ prod}"),
            ("plain", "plain"),
        ];
        for (raw, want) in table {
            let t = Template::parse(raw, ALL_VARS, &env).unwrap();
            assert_eq!(t.render(&vars), want, "{raw}");
        }
    }

    #[test]
    fn errors() {
        let table = [
            ("${MISSING}", "environment variable MISSING is not set"),
            ("${SECRET", "unterminated"),
            ("${1X}", "invalid environment variable name"),
            ("{nope}", "unknown placeholder {nope}"),
        ];
        for (raw, want) in table {
            let err = Template::parse(raw, ALL_VARS, &env).unwrap_err();
            assert!(err.contains(want), "{raw}: {err}");
        }
        assert!(Template::parse("{socket}", SOCKET_VARS, &env).is_err());
        assert!(Template::parse("${SOCKET_PATH}", SOCKET_VARS, &env).is_err());
    }
}
