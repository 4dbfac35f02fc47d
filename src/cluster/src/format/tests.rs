//! The versioned encodings: round trips, the compatibility rule (missing defaulted fields load,
//! unknown fields, variants and versions are refused by name), and bounds on hostile input.
use super::*;
use crate::state::VdiskDef;

fn bincode_opts() -> impl bincode::Options {
    use bincode::Options;
    // The peer protocol's options (transport::codec).
    bincode::DefaultOptions::new()
        .with_limit(1 << 20)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

fn to_bincode<T: Serialize>(v: &T) -> Vec<u8> {
    use bincode::Options;
    bincode_opts().serialize(v).unwrap()
}

fn from_bincode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    use bincode::Options;
    bincode_opts().deserialize(b).map_err(|e| e.to_string())
}

fn once(depth: usize) -> Command {
    let mut c = Command::CreateVdisk(VdiskDef {
        id: "1/a".into(),
        name: "a".into(),
        size_bytes: 1 << 20,
        parent_snapshot: Some("1/b@s".into()),
    });
    for i in 0..depth {
        c = Command::Once {
            request: format!("r{i}"),
            cmd: Box::new(c),
        };
    }
    c
}

/// A command as a binary encoding carries it: a byte string of version + JSON.
fn blob(version: u16, json: &str) -> Vec<u8> {
    let mut b = version.to_le_bytes().to_vec();
    b.extend_from_slice(json.as_bytes());
    to_bincode(&b)
}

#[test]
fn command_in_binary_is_a_versioned_json_string_and_round_trips() {
    let c = once(3);
    let b = to_bincode(&c);
    let expect = blob(FORMAT_VERSION, &serde_json::to_string(&c).unwrap());
    assert_eq!(b, expect, "bincode(command) = bytes(version | JSON)");
    assert_eq!(from_bincode::<Command>(&b).unwrap(), c);
    // Short values are padded, so their length never reads as a v1 variant index.
    let b = to_bincode(&Command::Noop);
    assert_eq!(usize::from(b[0]), MIN_VALUE_BYTES);
    assert_eq!(from_bincode::<Command>(&b).unwrap(), Command::Noop);
    let r = CommandResult::Rejected("no".into());
    assert_eq!(from_bincode::<CommandResult>(&to_bincode(&r)).unwrap(), r);
}

#[test]
fn command_in_json_is_inline_as_before() {
    assert_eq!(serde_json::to_string(&Command::Noop).unwrap(), "\"Noop\"");
    let j = serde_json::to_string(&once(1)).unwrap();
    assert!(
        j.starts_with(r#"{"Once":{"request":"r0","cmd":{"CreateVdisk":{"id":"1/a""#),
        "{j}"
    );
    assert_eq!(serde_json::from_str::<Command>(&j).unwrap(), once(1));
}

/// A planned move with no outdated member to name is written exactly as before the list
/// existed (older members in a mixed cluster read it), and an entry without it reads as empty.
#[test]
fn planned_moves_write_the_unused_outdated_list_only_when_there_is_one() {
    let plain = Command::MoveVdisk {
        id: "1/a".into(),
        to: 2,
        record: true,
        unused_outdated: vec![],
    };
    let j = serde_json::to_string(&plain).unwrap();
    assert_eq!(j, r#"{"MoveVdisk":{"id":"1/a","to":2,"record":true}}"#);
    assert_eq!(serde_json::from_str::<Command>(&j).unwrap(), plain);
    let named = Command::MoveVm {
        id: "v".into(),
        to: 2,
        record: true,
        unused_outdated: vec![3],
    };
    let j = serde_json::to_string(&named).unwrap();
    assert!(j.contains(r#""unused_outdated":[3]"#), "{j}");
    assert_eq!(from_bincode::<Command>(&to_bincode(&named)).unwrap(), named);
}

#[test]
fn a_v1_binary_refuses_every_current_command_and_result() {
    let cmds = [
        Command::Noop,
        Command::RemoveMember { id: 1 },
        Command::DeleteVm { id: "x".into() },
        Command::MoveVdisks { from: 1, to: 2 },
        Command::MoveVdisk {
            id: "1/a".into(),
            to: 2,
            record: true,
            unused_outdated: vec![],
        },
        Command::MoveVm {
            id: "1/v".into(),
            to: 2,
            record: true,
            unused_outdated: vec![],
        },
        once(0),
        once(2),
    ];
    for c in cmds {
        let err = v1::decode_command(&to_bincode(&c), 1 << 20).unwrap_err();
        assert!(err.contains("variant index"), "{c:?}: {err}");
    }
    let r = to_bincode(&CommandResult::Ok);
    assert!(r[0] >= 4, "CommandResult had 4 variants in v1");
}

#[test]
fn newer_version_unknown_field_and_unknown_variant_are_refused_by_name() {
    let newer = from_bincode::<Command>(&blob(3, r#""Noop""#)).unwrap_err();
    assert!(newer.contains("format version 3"), "{newer}");
    assert!(newer.contains("newer cairn"), "{newer}");
    let field =
        from_bincode::<Command>(&blob(2, r#"{"RemoveMember":{"id":1,"keep":true}}"#)).unwrap_err();
    assert!(field.contains("unknown field `keep`"), "{field}");
    let field = from_bincode::<Command>(&blob(
        2,
        r#"{"CreateVdisk":{"id":"x","name":"x","size_bytes":1,"parent_snapshot":null,"tier":"fast"}}"#,
    ))
    .unwrap_err();
    assert!(field.contains("unknown field `tier`"), "{field}");
    let variant = from_bincode::<Command>(&blob(2, r#"{"Defragment":{"id":"x"}}"#)).unwrap_err();
    assert!(
        variant.contains("unknown variant `Defragment`"),
        "{variant}"
    );
    let old = from_bincode::<Command>(&blob(1, r#""Noop""#)).unwrap_err();
    assert!(old.contains("format version 1"), "{old}");
}

#[test]
fn unknown_fields_in_the_request_log_membership_node_and_ca_are_refused_by_name() {
    let state = ClusterState {
        cluster_id: "c".into(),
        ..Default::default()
    };
    let mut b = STATE_MAGIC.to_vec();
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let json = serde_json::json!({
        "state": &state,
        "requests": { "results": {}, "order": [], "ttl": 5 },
    });
    b.extend_from_slice(&serde_json::to_vec(&json).unwrap());
    let e = decode_state(&b, 1 << 20).unwrap_err();
    assert!(e.contains("unknown field `ttl`"), "{e}");

    let node = serde_json::from_str::<crate::CairnNode>(
        r#"{"addr":"127.0.0.1:1","role":"Data","zone":"rack-2"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(node.contains("unknown field `zone`"), "{node}");
    let ok = serde_json::from_str::<crate::CairnNode>(r#"{"addr":"127.0.0.1:1","role":"Data"}"#);
    assert!(ok.is_ok(), "{ok:?}");

    let ca = transport::ClusterCa::generate("c").unwrap();
    let mut v = serde_json::to_value(&ca).unwrap();
    v["rotated"] = serde_json::json!(true);
    let e = serde_json::from_value::<transport::ClusterCa>(v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `rotated`"), "{e}");
}

#[test]
fn a_defaulted_field_may_be_missing() {
    // `requests` is `#[serde(default)]` in the snapshot document: data without it loads, the
    // way data from an older binary loads after a field is added under the rule.
    let mut b = STATE_MAGIC.to_vec();
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let state = ClusterState {
        cluster_id: "c".into(),
        ..Default::default()
    };
    let json = serde_json::json!({ "state": &state });
    b.extend_from_slice(&serde_json::to_vec(&json).unwrap());
    let (s, r) = decode_state(&b, 1 << 20).unwrap();
    assert_eq!(s, state);
    assert!(r.is_empty());
}

#[test]
fn state_round_trips_and_bad_state_bytes_fail_with_a_reason() {
    let state = ClusterState {
        cluster_id: "c".into(),
        next_node_id: u64::MAX,
        ..Default::default()
    };
    let mut requests = RequestLog::default();
    requests.insert("r1", CommandResult::PlacementVersion(u64::MAX));
    let b = encode_state(&state, &requests).unwrap();
    assert_eq!(decode_state(&b, 1 << 20).unwrap(), (state, requests));

    let mut newer = b.clone();
    newer[8] = 9;
    let e = decode_state(&newer, 1 << 20).unwrap_err();
    assert!(e.contains("snapshot data is in format version 9"), "{e}");
    let e = decode_state(&b[..9], 1 << 20).unwrap_err();
    assert!(e.contains("too short for a version"), "{e}");
    let e = decode_state(&b[..b.len() - 1], 1 << 20).unwrap_err();
    assert!(e.contains("snapshot data (format 2, JSON)"), "{e}");
    let e = decode_state(b"\x05hello", 1 << 20).unwrap_err();
    assert!(e.contains("snapshot data: format v1"), "{e}");
    // Every single-byte change either still decodes (inside a string) or fails; none panics.
    for i in 0..b.len() {
        let mut c = b.clone();
        c[i] ^= 0x5a;
        let _ = decode_state(&c, 1 << 20);
    }
}

#[test]
fn entries_round_trip_and_refuse_unknown_versions() {
    let e = Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 7),
        payload: openraft::EntryPayload::Normal(once(2)),
    };
    let b = encode_entry(&e).unwrap();
    assert_eq!(&b[..2], &FORMAT_VERSION.to_le_bytes());
    let back = decode_entry(&b).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&e).unwrap()
    );
    let mut newer = b.clone();
    newer[0] = 3;
    let err = decode_entry(&newer).unwrap_err();
    assert!(err.contains("log entry is in format version 3"), "{err}");
    assert!(decode_entry(&b[..1]).is_err());
    assert!(decode_entry(&b[..b.len() - 2]).is_err());
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // JSON (format 2): serde_json's recursion limit.
    let deep = "{\"Once\":{\"request\":\"r\",\"cmd\":".repeat(10_000);
    let err = from_bincode::<Command>(&blob(2, &deep)).unwrap_err();
    assert!(err.contains("recursion limit"), "{err}");
    // bincode (format v1): our own bound. Entry: log id (term, node, index), Normal, then
    // `Once { request: "" }` (variant 20) a million times.
    let mut v1 = vec![1u8, 1, 1, 1];
    for _ in 0..1_000_000 {
        v1.extend_from_slice(&[20, 0]);
    }
    v1.push(0);
    let err = decode_entry_v1(&v1, 16 << 20).unwrap_err();
    assert!(err.contains("nested more than"), "{err}");
}

#[test]
fn oversized_byte_strings_are_refused() {
    use bincode::Options;
    let opts = || bincode::DefaultOptions::new().with_limit(64 << 20);
    let b = opts().serialize(&vec![0u8; MAX_VALUE_BYTES + 1]).unwrap();
    let err = opts().deserialize::<Command>(&b).unwrap_err().to_string();
    assert!(err.contains("cluster command: too large"), "{err}");
}
