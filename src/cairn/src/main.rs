//! `cairn`: PID 1 on the appliance, `cairn node` on a Linux host, and the CLI client.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    eprintln!("cairn: being written");
    Ok(())
}
