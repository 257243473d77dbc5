//! The load generator (issue 9). Work in progress.

fn main() {
    eprintln!("loadgen: not built yet");
    std::process::exit(2);
}
