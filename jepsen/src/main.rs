//! The fault-injection harness (issue 8). Work in progress.

fn main() {
    eprintln!("jepsen: not built yet");
    std::process::exit(2);
}
