//! PID 1 of the Cairn appliance. The static `cairn` binary runs [`pid1_main`] when the kernel
//! starts it as process 1: it mounts the pseudo filesystems, opens the consoles, reaps zombies,
//! handles power signals and the watchdog, configures the network through netlink (DHCP with
//! smoltcp), runs the first-boot wizard, starts the node service, and then shows the console
//! status screen and menu.
//!
//! What it must never do: exit (the kernel would panic), touch a disk holding other data, or
//! write to the boot medium. Every fatal error ends in an orderly reboot (or halt, per
//! `cairn.on_fatal`). Logs are on the consoles and in [`log::recent`].

pub mod boot;
pub mod cmdline;
pub mod console;
pub mod dhcp;
pub mod hw;
pub mod log;
mod menu;
pub mod net;
pub mod netlink;
pub mod netlive;
pub mod power;
pub mod record;
pub mod service;
pub mod sys;
pub mod wizard;

use std::time::Duration;

use cmdline::Cmdline;
use hw::DiskKind;
use record::NodeRecord;

/// How long the first DHCP lease may take before boot goes on without an address.
const DHCP_TIMEOUT: Duration = Duration::from_secs(30);

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let _ = tracing_subscriber::fmt()
        // openraft's info lines are its internal state dumps (over a kilobyte each): warnings
        // and errors only, or they drown the console and the log ring.
        .with_env_filter(EnvFilter::new("info,openraft=warn"))
        .with_ansi(false)
        .without_time()
        .with_writer(log::LineWriter::default)
        .try_init();
}

fn random_node_id() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b).max(1)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The appliance's PID 1. Never returns.
pub fn pid1_main() -> ! {
    // Before any thread exists, so every thread inherits the blocked mask.
    let sig = sys::block_handled_signals();
    let mounted = boot::mount_filesystems();
    let consoles = boot::setup_consoles();
    if !consoles.is_empty() {
        log::capture_stdio();
    }
    logln!("Cairn {} starting as PID 1", env!("CARGO_PKG_VERSION"));
    let cmd = Cmdline::read();
    if let Err(e) = mounted {
        power::fatal(&e, cmd.on_fatal);
    }
    if let Err(e) = sig {
        logln!("signal setup: {e}");
    }
    init_tracing();
    boot::spawn_signal_thread();
    boot::start_watchdog(cmd.watchdog_timeout, cmd.watchdog_starve_after);
    net::loopback_up();
    boot::set_hostname("cairn");
    let mut term = console::ConsoleTerm::start(consoles);

    let inv = hw::inventory();
    let cairn: Vec<String> = inv
        .disks
        .iter()
        .filter(|d| d.kind == DiskKind::Cairn)
        .map(|d| d.name.clone())
        .collect();
    let usable: Vec<String> = inv
        .disks
        .iter()
        .filter(|d| matches!(d.kind, DiskKind::Cairn | DiskKind::Blank))
        .map(|d| d.name.clone())
        .collect();
    for d in &inv.disks {
        logln!("disk {} {}: {}", d.name, hw::human(d.size_bytes), d.kind);
    }
    let stored = if cairn.is_empty() {
        None
    } else {
        match service::read_record(&cairn) {
            Ok(r) => r,
            Err(e) => {
                logln!("configuration record unreadable: {e}; running setup");
                None
            }
        }
    };
    let (rec, password, join) = match stored {
        Some(r) => {
            logln!(
                "configured node {} (id {:016x}); no setup needed",
                r.hostname,
                r.node_id
            );
            (r, None, None)
        }
        None if !cmd.wizard => {
            logln!("not configured and cairn.wizard=0: waiting");
            park()
        }
        None => match wizard::run(&mut term, &inv) {
            Ok(setup) => {
                let (pw, join) = match setup.cluster {
                    wizard::ClusterChoice::Create { admin_password } => (admin_password, None),
                    wizard::ClusterChoice::Join {
                        address,
                        token,
                        admin_password,
                    } => (admin_password, Some(service::JoinIntent { address, token })),
                };
                let rec = NodeRecord {
                    node_id: random_node_id(),
                    hostname: setup.hostname,
                    net: setup.net,
                    cluster_net: setup.cluster_net,
                    cluster: match &join {
                        None => "created".into(),
                        Some(j) => format!("joining {}", j.address),
                    },
                    created_unix: now_unix(),
                    api_files: Default::default(),
                };
                logln!("setup confirmed: applying");
                (rec, Some(pw), join)
            }
            Err(e) => {
                logln!("setup ended without a configuration ({e:?}); waiting for a console");
                park()
            }
        },
    };
    boot::set_hostname(&rec.hostname);
    if let Err(e) = net::apply(&rec.net, DHCP_TIMEOUT) {
        logln!("network: {e} (the node starts anyway; fix it from the menu)");
    }
    if let Some(c) = &rec.cluster_net {
        if let Err(e) = net::apply_cluster(c) {
            // The cluster address is still this link's: the node starts, other members cannot
            // reach it until the link is there.
            logln!("network: cluster link: {e}");
        }
    }
    let (svc_rec, fail, on_fatal) = (rec.clone(), cmd.fail_node, cmd.on_fatal);
    let spawned = std::thread::Builder::new()
        .name("node-service".into())
        .spawn(move || {
            let r = service::run(svc_rec, usable, password, join, fail);
            if service::stop_requested() {
                // A power request stopped it; that request finishes the shutdown.
                park()
            }
            let what = match r {
                Ok(()) => "the node service stopped".to_string(),
                Err(e) => format!("the node service failed: {e}"),
            };
            power::fatal(&what, on_fatal)
        });
    if let Err(e) = spawned {
        power::fatal(
            &format!("cannot start the node service thread: {e}"),
            cmd.on_fatal,
        );
    }
    menu::run(&mut term, &rec)
}

/// Waits forever (signals still work: the signal thread reboots or powers off).
fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
