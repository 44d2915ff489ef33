//! Controller benchmark (stub).
mod support;
fn main() {
    let _ = support::Opts::parse("controller");
}
