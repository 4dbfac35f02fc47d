//! Request bodies of `/api/v1`, strict: unknown fields are an error, so a typo is never ignored.

use control::{format_size, ControlError, MAX_VDISK_SIZE_BYTES};
use serde::Deserialize;

/// `size` in a body: a positive number with a binary unit (`512M`, `10G`, `1GiB`, `8K`), as
/// openapi.json's `SizeText` pattern says, so every size the document allows is whole 4 KiB
/// blocks: at most 7 digits, and K only in multiples of 4. Plain bytes go in `size_bytes`. A
/// well-formed size past what any pool allows (1 PiB) is refused like one past this pool's
/// limit (409): the request is well formed, the pool cannot hold it.
pub(crate) fn size_text(text: &str) -> Result<u64, ControlError> {
    let bad = || {
        ControlError::invalid(format!(
            "size {text:?} is not a size like 512M, 10G or 2T (a number of up to 7 digits and a \
             unit K, M, G, T or P; K in multiples of 4); give plain bytes as size_bytes"
        ))
    };
    let s = text.trim_matches([' ', '\t']);
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let num = num.trim_start_matches('0');
    if num.is_empty() || num.len() > 7 {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "K" | "KB" | "KIB" if n.is_multiple_of(4) => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        _ => return Err(bad()),
    };
    let bytes = u128::from(n) << shift;
    if bytes > u128::from(MAX_VDISK_SIZE_BYTES) {
        return Err(ControlError::conflict(format!(
            "size {text:?} is more than any pool allows for one virtual disk ({} at most, and no \
             more than the pool's logical limit, see GET /api/v1/pool)",
            format_size(MAX_VDISK_SIZE_BYTES)
        )));
    }
    Ok(bytes as u64)
}

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
pub(crate) struct TakeoverBody {
    pub(crate) to: String,
    #[serde(default)]
    pub(crate) force: bool,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmMoveBody {
    pub(crate) to: String,
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
    #[serde(default)]
    pub(crate) nics: Vec<control::VmNicSpec>,
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
/// `POST /cluster/members/{node}/locate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterLocateBody {
    pub(crate) address: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterTokenBody {
    #[serde(default)]
    pub(crate) witness: bool,
    pub(crate) ttl_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_text_takes_exactly_the_documented_forms() {
        assert_eq!(size_text("8M").unwrap(), 8 << 20);
        assert_eq!(size_text(" 10GiB\t").unwrap(), 10 << 30);
        assert_eq!(size_text("8k").unwrap(), 8 << 10);
        assert_eq!(size_text("0012kb").unwrap(), 12 << 10);
        assert_eq!(size_text("1P").unwrap(), MAX_VDISK_SIZE_BYTES);
        // Not whole 4 KiB blocks, no unit, zero, too many digits, other space: bad input.
        for bad in [
            "6K",
            "4096",
            "4096B",
            "0M",
            "00",
            "12345678M",
            "1.5G",
            "\n8M",
            "8X",
            "",
        ] {
            let e = size_text(bad).unwrap_err();
            assert_eq!(e.code, control::ErrorCode::InvalidArgument, "{bad:?}");
        }
        // Well formed but more than any pool holds: a conflict, like past this pool's limit.
        let e = size_text("2P").unwrap_err();
        assert_eq!(e.code, control::ErrorCode::Conflict);
        assert_eq!(
            size_text("9999999P").unwrap_err().code,
            control::ErrorCode::Conflict
        );
    }
}
