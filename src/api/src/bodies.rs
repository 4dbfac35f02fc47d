//! Request bodies of `/api/v1`, strict: unknown fields are an error, so a typo is never ignored.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VdiskCreateBody {
    pub(crate) name: String,
    pub(crate) size_bytes: Option<u64>,
    pub(crate) size: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResizeBody {
    pub(crate) size_bytes: Option<u64>,
    pub(crate) size: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameBody {
    pub(crate) name: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathBody {
    pub(crate) path: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CloneBody {
    pub(crate) name: String,
    pub(crate) snapshot: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportBody {
    pub(crate) name: String,
    pub(crate) file: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportBody {
    pub(crate) file: String,
    pub(crate) snapshot: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NbdBody {
    pub(crate) vdisk: String,
    pub(crate) snapshot: Option<String>,
    pub(crate) listen: Option<String>,
    #[serde(default)]
    pub(crate) read_only: bool,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserCreateBody {
    pub(crate) name: String,
    pub(crate) role: control::Role,
    pub(crate) password: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserUpdateBody {
    pub(crate) role: Option<control::Role>,
    pub(crate) password: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    pub(crate) name: String,
    pub(crate) role: Option<control::Role>,
    pub(crate) expires_in_secs: Option<u64>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertBody {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmCreateBody {
    pub(crate) name: String,
    pub(crate) vcpus: u8,
    pub(crate) memory_mib: u64,
    #[serde(default)]
    pub(crate) disks: Vec<String>,
    pub(crate) kernel: String,
    pub(crate) cmdline: Option<String>,
}
/// `POST /vms/{name}/disks`: attach an existing virtual disk.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmDiskAttachBody {
    pub(crate) vdisk: String,
}

/// `POST /vms/{name}/stop`; an empty body means a graceful stop with the default timeout.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmStopBody {
    #[serde(default)]
    pub(crate) force: bool,
    pub(crate) timeout_ms: Option<u64>,
}

/// `PATCH /vms/{name}`: only the fields given change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmUpdateBody {
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) vcpus: Option<u8>,
    pub(crate) memory_mib: Option<u64>,
    pub(crate) cmdline: Option<String>,
    pub(crate) disks: Option<Vec<String>>,
    pub(crate) nics: Option<Vec<control::VmNicSpec>>,
}

/// `POST /cluster/tokens`; an empty body means a data-node token valid one hour.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterTokenBody {
    #[serde(default)]
    pub(crate) witness: bool,
    pub(crate) ttl_secs: Option<u64>,
}
