//! The `toxaudit` command. Thin: it parses arguments and calls the libraries.

fn main() -> anyhow::Result<()> {
    Ok(())
}
