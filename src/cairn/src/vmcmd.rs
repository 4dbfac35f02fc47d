//! `cairn vm ...`: the VM subcommands, turned into `control::Request`s, and their text output.
//! Parsing and rendering only; the node decides everything.

use std::path::PathBuf;

use clap::Subcommand;
use control::{format_size, ControlError, Reply, Request, VmView};

fn name_arg(s: &str) -> Result<String, String> {
    control::validate_name("VM", s).map_err(|e| e.message)?;
    Ok(s.to_string())
}

/// Memory like `128M`, `2G` (bytes are rounded down to whole MiB).
fn mem_arg(s: &str) -> Result<u64, String> {
    let bytes = control::parse_size(s).map_err(|e| e.message)?;
    if bytes % (1 << 20) != 0 {
        return Err(format!("memory {s} is not a whole number of MiB"));
    }
    Ok(bytes >> 20)
}

/// A NIC as `TAP[,MAC][,bridge=BRIDGE|none][,vlan=N]` (the node checks the names and the
/// MAC; a missing MAC is kept or generated; with a bridge the tap joins it when the VM starts,
/// on VLAN N untagged when given; without one the node's default bridge, if it has one;
/// `bridge=none`: a plain tap, even there).
fn nic_arg(s: &str) -> Result<control::VmNicSpec, String> {
    const FORM: &str = "TAP[,MAC][,bridge=BRIDGE|none][,vlan=N]";
    let mut parts = s.split(',');
    let tap = parts.next().unwrap_or_default();
    if tap.is_empty() {
        return Err(format!("NIC {s:?}: the tap device name is empty"));
    }
    let (mut mac, mut bridge, mut vlan) = (None, None, None);
    for p in parts {
        if let Some(v) = p.strip_prefix("vlan=") {
            if vlan.is_some() {
                return Err(format!("NIC {s:?}: expected {FORM}, each at most once"));
            }
            vlan = Some(vlan_arg(v).map_err(|e| format!("NIC {s:?}: {e}"))?);
            continue;
        }
        let slot = match p.strip_prefix("bridge=") {
            Some(b) => (&mut bridge, b),
            None => (&mut mac, p),
        };
        if slot.0.is_some() || slot.1.is_empty() {
            return Err(format!("NIC {s:?}: expected {FORM}, each at most once"));
        }
        *slot.0 = Some(slot.1.to_string());
    }
    // Without bridge= the node gives the NIC its default bridge, or refuses the VLAN if it has
    // none; with bridge=none there is never a bridge port to put the VLAN on.
    if vlan.is_some() && bridge.as_deref() == Some(control::NO_BRIDGE) {
        return Err(format!(
            "NIC {s:?}: vlan= needs a bridge, not bridge={} (the VLAN is set on the tap's port of its bridge)",
            control::NO_BRIDGE
        ));
    }
    Ok(control::VmNicSpec {
        tap: tap.to_string(),
        mac,
        bridge,
        vlan,
    })
}

/// An 802.1Q VLAN id, 1 to 4094.
fn vlan_arg(v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|n| (control::MIN_VLAN_ID..=control::MAX_VLAN_ID).contains(n))
        .ok_or_else(|| {
            format!(
                "VLAN id {v:?} must be a number from {} to {}",
                control::MIN_VLAN_ID,
                control::MAX_VLAN_ID
            )
        })
}

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Define a VM booting KERNEL (a PVH ELF or bzImage on the node's host) on virtual disks.
    Create {
        #[arg(value_parser = name_arg)]
        name: String,
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        /// Guest memory (like 128M or 2G).
        #[arg(long, value_parser = mem_arg, default_value = "128M")]
        memory: u64,
        /// A virtual disk to attach (repeat for more; attached in order).
        #[arg(long = "disk", value_name = "VDISK")]
        disks: Vec<String>,
        #[arg(long)]
        kernel: PathBuf,
        /// Kernel command line.
        #[arg(long)]
        cmdline: Option<String>,
        /// A NIC on a host tap device (repeat for more: net0, net1, ...); with bridge= the tap
        /// joins that bridge when the VM starts, without it the node's default bridge if it has
        /// one (the appliance's), with bridge=none no bridge (a plain tap, for a host-only
        /// network); with vlan= (1-4094) on that VLAN only, untagged towards the guest (the
        /// node turns VLAN filtering on on the bridge).
        #[arg(long = "nic", value_name = "TAP[,MAC][,bridge=BRIDGE|none][,vlan=N]", value_parser = nic_arg)]
        nics: Vec<control::VmNicSpec>,
    },
    /// List VMs.
    List,
    /// Show one VM with its live statistics.
    Show { name: String },
    /// Power the VM on (its virtual disks are opened on this node).
    Start { name: String },
    /// Ask the guest to shut down, then stop it by force after --timeout-ms.
    Stop {
        name: String,
        /// Stop at once, without asking the guest.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Freeze the VM's vCPUs (memory and devices stay as they are).
    Pause { name: String },
    /// Let a paused VM run again.
    Resume { name: String },
    /// Delete a stopped VM (its virtual disks are kept).
    Delete { name: String },
    /// Move a stopped VM with all its virtual disks to another data node (clustering): its node
    /// hands the disks over, NODE (id or name) adopts them and defines the VM there, stopped
    /// (`vm start` on NODE runs it). Refused while the VM runs or is paused.
    Move {
        name: String,
        #[arg(long)]
        to: String,
    },
    /// Attach a virtual disk to a VM: at once if it runs (a new virtio-blk device appears to
    /// the guest), at its next start otherwise.
    Attach { name: String, vdisk: String },
    /// Detach a virtual disk from a VM: a running guest is asked to release it (ACPI eject)
    /// and has --timeout-ms to answer; a stopped VM just loses it from its definition.
    Detach {
        name: String,
        vdisk: String,
        /// Remove it even if the guest does not release it in time.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Change a VM's definition. Everything but --description needs the VM stopped. --disk
    /// (repeat, in boot order) must list exactly the VM's current disks; --nic
    /// TAP[,MAC][,bridge=BRIDGE|none][,vlan=N] (repeat) replaces every NIC (say bridge=none for
    /// a NIC `vm show` lists with bridge none, or it joins the node's default bridge if it has
    /// one), --no-nics removes them all.
    Edit {
        name: String,
        #[arg(long, value_parser = name_arg)]
        rename: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        vcpus: Option<u8>,
        /// Guest memory (like 128M or 2G).
        #[arg(long, value_parser = mem_arg)]
        memory: Option<u64>,
        #[arg(long)]
        cmdline: Option<String>,
        #[arg(long = "disk", value_name = "VDISK")]
        disks: Vec<String>,
        #[arg(long = "nic", value_name = "TAP[,MAC][,bridge=BRIDGE|none][,vlan=N]", value_parser = nic_arg, conflicts_with = "no_nics")]
        nics: Vec<control::VmNicSpec>,
        #[arg(long)]
        no_nics: bool,
    },
    /// Print the tail of the VM's console output.
    Console {
        name: String,
        /// Most bytes to print.
        #[arg(long)]
        bytes: Option<u64>,
    },
}

pub fn request(cmd: VmCmd) -> Result<Request, ControlError> {
    Ok(match cmd {
        VmCmd::Create {
            name,
            vcpus,
            memory,
            disks,
            kernel,
            cmdline,
            nics,
        } => Request::VmCreate {
            name,
            vcpus,
            memory_mib: memory,
            disks,
            kernel: std::path::absolute(&kernel)
                .map_err(|e| ControlError::invalid(format!("kernel {}: {e}", kernel.display())))?
                .display()
                .to_string(),
            cmdline,
            nics,
        },
        VmCmd::List => Request::VmList,
        VmCmd::Show { name } => Request::VmGet { name },
        VmCmd::Start { name } => Request::VmStart { name },
        VmCmd::Stop {
            name,
            force,
            timeout_ms,
        } => Request::VmStop {
            name,
            force,
            timeout_ms,
        },
        VmCmd::Pause { name } => Request::VmPause { name },
        VmCmd::Resume { name } => Request::VmResume { name },
        VmCmd::Delete { name } => Request::VmDelete { name },
        VmCmd::Move { name, to } => Request::VmMove { name, to },
        VmCmd::Attach { name, vdisk } => Request::VmDiskAttach { name, vdisk },
        VmCmd::Detach {
            name,
            vdisk,
            force,
            timeout_ms,
        } => Request::VmDiskDetach {
            name,
            vdisk,
            force,
            timeout_ms,
        },
        VmCmd::Edit {
            name,
            rename,
            description,
            vcpus,
            memory,
            cmdline,
            disks,
            nics,
            no_nics,
        } => {
            let nics = if no_nics {
                Some(Vec::new())
            } else {
                (!nics.is_empty()).then_some(nics)
            };
            Request::VmUpdate {
                name,
                new_name: rename,
                description,
                vcpus,
                memory_mib: memory,
                cmdline,
                disks: (!disks.is_empty()).then_some(disks),
                nics,
            }
        }
        VmCmd::Console { name, bytes } => Request::VmConsole {
            name,
            max_bytes: bytes,
        },
    })
}

fn show(v: &VmView) -> String {
    let mut out = format!(
        "name:     {}\nstate:    {}\nvcpus:    {}\nmemory:   {} MiB\nkernel:   {}\ncmdline:  {}\ndisks:    {}\n",
        v.name,
        v.state,
        v.vcpus,
        v.memory_mib,
        v.kernel,
        v.cmdline,
        v.disks.join(", ")
    );
    if let Some(n) = &v.node {
        out += &format!("node:     {n}\n");
    }
    if !v.description.is_empty() {
        out += &format!("about:    {}\n", v.description);
    }
    for n in &v.nics {
        // Always said, in the form --nic takes back: a NIC without one is a plain tap.
        let bridge = n.bridge.as_deref().unwrap_or(control::NO_BRIDGE);
        out += &format!(
            "nic {}:   tap {} mac {} bridge {bridge}",
            n.id, n.tap, n.mac
        );
        if let Some(v) = n.vlan {
            out += &format!(" vlan {v}");
        }
        out.push('\n');
    }
    if let Some(op) = &v.operation {
        out += &format!("busy:     {op}\n");
    }
    if let Some(e) = &v.last_exit {
        out += &format!("exit:     {e}\n");
    }
    if let Some(s) = &v.stats {
        out += &format!(
            "cpu time: {:.3} s\nexits:    {}\n",
            s.cpu_time_ns as f64 / 1e9,
            s.vcpu_exits
        );
        for d in s.disks.iter().chain(&s.nics) {
            out += &format!(
                "device {}: {} reads ({}), {} writes ({}), {} flushes, {} errors, mean {} us\n",
                d.id,
                d.read_ops,
                format_size(d.read_bytes),
                d.write_ops,
                format_size(d.write_bytes),
                d.flush_ops,
                d.errors,
                d.mean_latency_ns / 1000
            );
        }
    }
    out
}

/// Text for VM replies; None for other replies.
pub fn render(r: &Reply) -> Option<String> {
    Some(match r {
        Reply::Vm(v) => show(v),
        Reply::Vms(vs) => {
            // Through a node's API the list is every member's: each names its member.
            let nodes = vs.iter().any(|v| v.node.is_some());
            let node = |v: &VmView| match nodes {
                true => format!("{:<12} ", crate::render::node_word(v.node.as_deref())),
                false => String::new(),
            };
            let mut out = format!(
                "{:<24} {:<8} {:>5} {:>10}  {}DISKS\n",
                "NAME",
                "STATE",
                "VCPUS",
                "MEMORY",
                if nodes { "NODE         " } else { "" }
            );
            for v in vs {
                out += &format!(
                    "{:<24} {:<8} {:>5} {:>6} MiB  {}{}\n",
                    v.name,
                    v.state,
                    v.vcpus,
                    v.memory_mib,
                    node(v),
                    v.disks.join(",")
                );
            }
            out
        }
        Reply::Console(c) => {
            let mut s = c.output.clone();
            if !s.ends_with('\n') && !s.is_empty() {
                s.push('\n');
            }
            s
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(mem_arg("128M").unwrap(), 128);
        assert_eq!(mem_arg("2G").unwrap(), 2048);
        assert!(mem_arg("1000").is_err());
        assert!(mem_arg("lots").is_err());
    }

    #[test]
    fn nic_arguments() {
        let n = nic_arg("tap0").unwrap();
        assert_eq!((n.tap.as_str(), n.mac), ("tap0", None));
        let n = nic_arg("tap1,52:54:00:12:34:56").unwrap();
        assert_eq!(n.mac.as_deref(), Some("52:54:00:12:34:56"));
        assert!(nic_arg(",52:54:00:12:34:56").is_err());
        let n = nic_arg("tap2,bridge=br0").unwrap();
        assert_eq!((n.mac, n.bridge.as_deref()), (None, Some("br0")));
        let n = nic_arg("tap3,bridge=br1,02:00:00:00:00:03").unwrap();
        assert_eq!(n.mac.as_deref(), Some("02:00:00:00:00:03"));
        assert_eq!(n.bridge.as_deref(), Some("br1"));
        for bad in [
            "t,bridge=a,bridge=b",
            "t,02:00:00:00:00:01,02:00:00:00:00:02",
            "t,",
            "t,bridge=",
        ] {
            assert!(nic_arg(bad).is_err(), "{bad}");
        }
        let n = nic_arg("tap4,bridge=br0,vlan=10").unwrap();
        assert_eq!((n.bridge.as_deref(), n.vlan), (Some("br0"), Some(10)));
        let n = nic_arg("tap5,vlan=4094,02:00:00:00:00:05,bridge=br0").unwrap();
        assert_eq!(
            (n.mac.as_deref(), n.vlan),
            (Some("02:00:00:00:00:05"), Some(4094))
        );
        for (bad, why) in [
            ("t,bridge=br0,vlan=0", "from 1 to 4094"),
            ("t,bridge=br0,vlan=4095", "from 1 to 4094"),
            ("t,bridge=br0,vlan=ten", "from 1 to 4094"),
            ("t,bridge=br0,vlan=", "from 1 to 4094"),
            ("t,bridge=br0,vlan=1,vlan=2", "at most once"),
            ("t,bridge=none,vlan=10", "needs a bridge, not bridge=none"),
        ] {
            let e = nic_arg(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // bridge=none is passed on as the word (the node keeps a plain tap); a VLAN without
        // bridge= is the node's to judge (its default bridge, if it has one).
        let n = nic_arg("tap6,bridge=none").unwrap();
        assert_eq!(n.bridge.as_deref(), Some(control::NO_BRIDGE));
        let n = nic_arg("tap7,vlan=10").unwrap();
        assert_eq!((n.bridge, n.vlan), (None, Some(10)));
    }

    #[test]
    fn show_says_each_nics_bridge_none_included() {
        let nic = |id: &str, bridge: Option<&str>, vlan: Option<u16>| control::VmNicView {
            id: id.into(),
            tap: format!("tap-{id}"),
            mac: "02:00:00:00:00:01".into(),
            bridge: bridge.map(Into::into),
            vlan,
        };
        let v = VmView {
            name: "web".into(),
            description: String::new(),
            state: "defined".into(),
            operation: None,
            vcpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            nics: vec![
                nic("net0", Some("cairn0"), Some(10)),
                nic("net1", None, None),
            ],
            kernel: "/k".into(),
            cmdline: String::new(),
            created_unix: 0,
            last_exit: None,
            stats: None,
            node: None,
        };
        let out = show(&v);
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("nic ")).collect();
        assert_eq!(
            lines,
            [
                "nic net0:   tap tap-net0 mac 02:00:00:00:00:01 bridge cairn0 vlan 10",
                "nic net1:   tap tap-net1 mac 02:00:00:00:00:01 bridge none",
            ]
        );
        // What it says parses back into the NIC --nic gives.
        let back = nic_arg("tap-net1,02:00:00:00:00:01,bridge=none").unwrap();
        assert_eq!(back.bridge.as_deref(), Some("none"));
    }

    #[test]
    fn edit_sends_only_what_was_given() {
        let Request::VmUpdate {
            name,
            description,
            vcpus,
            disks,
            nics,
            ..
        } = request(VmCmd::Edit {
            name: "web".into(),
            rename: None,
            description: Some("front end".into()),
            vcpus: None,
            memory: None,
            cmdline: None,
            disks: Vec::new(),
            nics: Vec::new(),
            no_nics: true,
        })
        .unwrap()
        else {
            panic!("not an update");
        };
        assert_eq!(name, "web");
        assert_eq!(description.as_deref(), Some("front end"));
        assert_eq!((vcpus, disks), (None, None));
        assert_eq!(nics, Some(Vec::new()), "--no-nics removes every NIC");
    }
}
