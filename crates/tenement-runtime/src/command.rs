//! From a service's `command` + `args` to an argv.

/// Characters that make a command line need a shell.
const SHELL_SYNTAX: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
    '=', '%', '{', '}', '\n',
];

/// A plain command (`./api --flag`) is split on whitespace and executed directly, without a
/// shell in between; one that uses shell syntax (quotes, pipes, `$VAR`, `&&`...) runs under
/// `/bin/sh -c`, with `args` passed as the positional parameters `"$@"`.
pub fn argv_for(command: &str, args: &[String]) -> Vec<String> {
    if command.contains(SHELL_SYNTAX) {
        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!("{command} \"$@\""),
            "sh".to_owned(),
        ];
        argv.extend(args.iter().cloned());
        argv
    } else {
        command
            .split_whitespace()
            .map(str::to_owned)
            .chain(args.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_shell_commands() {
        let args = vec!["--port".to_string(), "80 80".to_string()];
        assert_eq!(
            argv_for("./api  -v", &args),
            ["./api", "-v", "--port", "80 80"]
        );
        assert_eq!(
            argv_for("cd app && exec ./api", &args),
            [
                "/bin/sh",
                "-c",
                "cd app && exec ./api \"$@\"",
                "sh",
                "--port",
                "80 80"
            ]
        );
        assert_eq!(
            argv_for("python3 -m http.server", &[]),
            ["python3", "-m", "http.server"]
        );
    }
}
