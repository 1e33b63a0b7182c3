//! A `wasi:cli` command component (exports `wasi:cli/run`): what tenement must refuse.
fn main() {
    println!("a command, not a handler");
}
