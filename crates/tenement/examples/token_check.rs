//! Token verification cost (docs/benchmarks.md): `cargo run --release -p tenement --example
//! token_check`. Times `Tokens::check` for a good token, a wrong secret and an unknown id, over
//! a store holding 1,000 tokens, and prints a markdown table (ns per check, median of 7 runs).

use std::time::Instant;

use tenement::{Check, Store, Tokens};

const ROUNDS: usize = 200_000;

fn main() {
    let dir = std::env::temp_dir().join(format!("token-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = Store::open(&dir.join("t.db")).expect("store");
    let tokens = Tokens::new(store);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let all: Vec<String> = (0..1000)
        .map(|_| rt.block_on(tokens.generate(None)).expect("generate"))
        .collect();
    let good = all[500].clone();
    let id = good.split('_').nth(1).expect("id");
    let wrong = format!("ten_{id}_{}", "0".repeat(48));
    let unknown = format!("ten_999999_{}", "0".repeat(48));
    println!("| token | ns per check (median of 7 × {ROUNDS}) |\n|---|---|");
    for (name, token, want_valid) in [
        ("good", &good, true),
        ("wrong secret", &wrong, false),
        ("unknown id", &unknown, false),
    ] {
        let mut runs: Vec<f64> = (0..7)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..ROUNDS {
                    let valid =
                        matches!(tokens.check(std::hint::black_box(token)), Check::Valid(_));
                    assert_eq!(valid, want_valid);
                }
                start.elapsed().as_nanos() as f64 / ROUNDS as f64
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        println!("| {name} | {:.0} |", runs[3]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
