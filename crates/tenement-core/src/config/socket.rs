//! Socket path templates: two instances can never resolve to one path.
//!
//! A template contains `{id}` exactly once and no `{port}` (a port is reallocated at every
//! start; a socket path must be stable), and no `.` or `..` component. With `{name}` and
//! `{data_dir}` filled in, each service's template is `prefix + id + suffix`; two services
//! collide when some ids `x`, `y` make `prefix_a + x + suffix_a == prefix_b + y + suffix_b`.
//! [`collision`] decides that exactly for the id alphabet (`[a-z0-9-]`, 1–63 characters, no
//! `-` at either end) and returns the two ids as the witness the error message shows.

use super::template::{Template, Vars};

/// The default: a directory of its own per instance, inside the instance's data directory
/// (`{data_dir}/{id}` renders as `{data_dir}/{name}/{id}`): unambiguous, owned by the
/// instance's user, and counted against its storage quota.
pub const DEFAULT_SOCKET: &str = "{data_dir}/{id}/app.sock";

/// Checks what can be checked of one template alone.
pub fn check(t: &Template) -> Result<(), String> {
    let ids = t.as_str().matches("{id}").count();
    if ids != 1 {
        return Err(format!(
            "must contain {{id}} exactly once (found {ids}), so that every instance gets its own socket"
        ));
    }
    if t.contains("port") {
        return Err(
            "must not contain {port}: the port changes at every start, a socket path must not"
                .into(),
        );
    }
    if t.as_str().split('/').any(|c| c == "." || c == "..") {
        return Err("must not contain `.` or `..` path components".into());
    }
    Ok(())
}

/// The rendered template of service `name` as (prefix, suffix) around the instance id.
pub fn split(t: &Template, name: &str, data_dir: &str) -> (String, String) {
    const MARK: &str = "\u{1}";
    let vars = Vars {
        name,
        id: MARK,
        data_dir,
        socket: "",
        port: 0,
    };
    let rendered = normalize(&t.render(&vars));
    let (p, s) = rendered.split_once(MARK).unwrap_or((&rendered, ""));
    (p.to_owned(), s.to_owned())
}

/// Collapses repeated slashes (`a//b` names the same file as `a/b`).
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

fn id_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && id_chars(s) && !s.starts_with('-') && !s.ends_with('-')
}

/// Ids `(x, y)` such that `a.0 + x + a.1 == b.0 + y + b.1`, if there are any.
pub fn collision(a: (&str, &str), b: (&str, &str)) -> Option<(String, String)> {
    if a.0.len() > b.0.len() {
        return collision(b, a).map(|(x, y)| (y, x));
    }
    // b's prefix = a's prefix + d; a's id = d + m.
    let d = b.0.strip_prefix(a.0)?;
    if !id_chars(d) {
        return None;
    }
    let (x, y) = if a.1.len() >= b.1.len() {
        // a's suffix = f + b's suffix; b's id = m + f.
        let f = a.1.strip_suffix(b.1)?;
        (format!("{d}a"), format!("a{f}"))
    } else {
        // b's suffix = e + a's suffix; m = y + e.
        let e = b.1.strip_suffix(a.1)?;
        (format!("{d}a{e}"), "a".to_owned())
    };
    (id_chars(&x) && id_chars(&y) && valid_id(&x) && valid_id(&y)).then_some((x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::literal(s)
    }

    #[test]
    fn single_template_rules() {
        assert!(check(&t("/run/x/{name}-{id}.sock")).is_ok());
        assert!(check(&t(DEFAULT_SOCKET)).is_ok());
        assert!(check(&t("/run/{id}/{id}.sock")).is_err());
        assert!(check(&t("/run/x.sock")).is_err());
        assert!(check(&t("/run/{port}-{id}.sock")).is_err());
        assert!(check(&t("/run/../{id}.sock")).is_err());
        assert!(check(&t("/run/./{id}.sock")).is_err());
    }

    #[test]
    fn collisions_between_services() {
        let old_default = t("/tmp/tenement/{name}-{id}.sock");
        let shop = split(&old_default, "shop", "/d");
        let shop_eu = split(&old_default, "shop-eu", "/d");
        let (p, s) = (&shop, &shop_eu);
        let (x, y) = collision((&p.0, &p.1), (&s.0, &s.1)).expect("the old default collides");
        assert_eq!(format!("{}{x}{}", p.0, p.1), format!("{}{y}{}", s.0, s.1));
        assert_eq!((x.as_str(), y.as_str()), ("eu-a", "a"));

        let default = t(DEFAULT_SOCKET);
        let cases: &[(&str, &str, &str, &str, bool)] = &[
            // template a, name a, template b, name b, collide?
            (DEFAULT_SOCKET, "shop", DEFAULT_SOCKET, "shop-eu", false),
            (
                "/s/{name}/{id}.sock",
                "a",
                "/s/{name}/{id}.sock",
                "b",
                false,
            ),
            ("/s/{id}.sock", "a", "/s/{id}.sock", "b", true),
            ("/s/x-{id}.sock", "a", "/s/{id}.sock", "b", true),
            ("/s/{id}.sock", "a", "/s/{id}-x.sock", "b", true),
            ("/s/{id}.sock", "a", "/s/{id}.x.sock", "b", false),
            ("/s/{id}", "a", "/s/{id}/app.sock", "b", false),
            ("/s//{id}.sock", "a", "/s/{id}.sock", "b", true),
            ("/s/-{id}.sock", "a", "/s/{id}.sock", "b", false), // an id cannot start with '-'
            ("/s/{id}.sock", "a", "/s/{id}-.sock", "b", false), // nor end with it
            ("/s/{name}{id}.sock", "ab", "/s/{name}{id}.sock", "a", true),
        ];
        for (ta, na, tb, nb, want) in cases {
            let a = split(&t(ta), na, "/d");
            let b = split(&t(tb), nb, "/d");
            let got = collision((&a.0, &a.1), (&b.0, &b.1));
            assert_eq!(got.is_some(), *want, "{ta} ({na}) vs {tb} ({nb}): {got:?}");
            if let Some((x, y)) = got {
                assert!(valid_id(&x) && valid_id(&y), "{x} {y}");
                assert_eq!(format!("{}{x}{}", a.0, a.1), format!("{}{y}{}", b.0, b.1));
            }
        }
        assert_eq!(
            split(&default, "api", "/d"),
            ("/d/api/".into(), "/app.sock".into())
        );
    }
}
