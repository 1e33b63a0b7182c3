//! `slum serve` for the tests: started on a free port, killed on drop.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const SLUM: &str = env!("CARGO_BIN_EXE_slum");

pub struct Serving {
    child: Child,
    pub url: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `slum serve --db DB ARGS` on a free port of 127.0.0.1 (its URL read from the line it
/// prints).
#[allow(dead_code)] // not every test binary uses it
pub fn serve(db: &Path, args: &[&str]) -> Serving {
    serve_on("127.0.0.1", db, args)
}

/// `slum serve --db DB ARGS` on a free port of `ip`.
pub fn serve_on(ip: &str, db: &Path, args: &[&str]) -> Serving {
    let mut child = Command::new(SLUM)
        .args(["serve", "--listen", &format!("{ip}:0"), "--db"])
        .arg(db)
        .args(args)
        .env_remove("SLUM_TOKEN")
        .env_remove("SLUM_JOIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(format!("{}.log", db.display())).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches(',')
        .to_owned();
    Serving { child, url }
}
