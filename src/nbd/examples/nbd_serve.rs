//! Serve a file or block device over NBD (io_uring, O_DIRECT), for manual tests and benchmarks:
//! `nbd_serve PATH [ADDR] [NAME]` (defaults 127.0.0.1:10809, export name "disk").

use std::sync::Arc;

use nbd::{DeviceExport, NbdServer};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: nbd_serve PATH [ADDR] [NAME]"))?;
    let addr = args.next().unwrap_or_else(|| nbd::DEFAULT_ADDR.to_string());
    let name = args.next().unwrap_or_else(|| "disk".to_string());
    // CAIRN_NBD_THREADS=1 runs everything on one thread (compare with qemu-storage-daemon).
    let threads: usize = std::env::var("CAIRN_NBD_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rt = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    rt.block_on(async {
        let dev = blockdev::open_device(&path)?;
        let server = NbdServer::bind(addr.as_str()).await?;
        server.add_export(&name, Arc::new(DeviceExport::new(dev, false)))?;
        eprintln!("serving {path} as nbd://{}/{name}", server.local_addr()?);
        server.serve().await;
        anyhow::Ok(())
    })
}
