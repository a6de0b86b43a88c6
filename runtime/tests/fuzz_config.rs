//! Fuzzing config.json through the checks `husk create` makes before it
//! touches the host (`ops::check_create`: parsing, the bundle, the options,
//! the operator's policy, the VM's size), at library level: no VM, no root.
//!
//! Each case mutates a valid config (`husk spec`'s, plus resources and
//! annotations): type changes, removed and extra fields, huge numbers,
//! wrong enum strings, long strings, deep nesting, torn bytes. Properties:
//! nothing panics, and a config that is valid JSON but not a valid spec is
//! refused with a message that names the field path it is about (or, for
//! a missing field, the field). Cases: 256 per property, `HUSK_FUZZ_CASES`
//! for more (README, "Fuzzing").

use husk_protocol::fuzzing::config;
use husk_runtime::bundle::BundleError;
use husk_runtime::ops::{check_create, CreateOptions, OpError};
use proptest::prelude::*;
use serde_json::{json, Value};

/// A valid config: `husk spec`'s, not a terminal, with a memory limit, a
/// CPU quota and the sizing annotations.
fn base() -> Value {
    let mut v: Value = serde_json::from_str(husk_runtime::ops::default_spec()).unwrap();
    v["process"]["terminal"] = json!(false);
    v["linux"]["resources"] = json!({
        "memory": {"limit": 268_435_456},
        "cpu": {"quota": 150_000, "period": 100_000}
    });
    v["annotations"] = json!({"husk.memory_mib": "512", "husk.vcpus": "2", "io.x": "y"});
    v
}

/// One step of a path in the JSON tree.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The path as `serde_path_to_error` prints it (`mounts[0].destination`).
fn dotted(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn all_paths(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                here.push(Seg::Key(k.clone()));
                all_paths(c, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                here.push(Seg::Index(i));
                all_paths(c, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'v>(v: &'v mut Value, path: &[Seg]) -> &'v mut Value {
    path.iter().fold(v, |v, seg| match seg {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::Index(i) => &mut v[*i],
    })
}

/// What a mutation does at the node it picks.
#[derive(Debug, Clone)]
enum Op {
    /// Replaces the node (a type change, a huge or negative number, a
    /// wrong enum string, ...).
    Replace(Value),
    /// Removes it from its object or array.
    Remove,
    /// Adds a field next to it (an unknown field, or a known one twice).
    AddField(String, Value),
    /// Wraps it in `depth` arrays or objects.
    Nest { depth: usize, objects: bool },
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(u64::MAX), Just(u64::from(u32::MAX) + 1), Just(1 << 63)]
            .prop_map(Value::from),
        prop_oneof![Just(-1i64), Just(i64::MIN), Just(0)].prop_map(Value::from),
        prop_oneof![Just(1e308), Just(-0.5), Just(2.5)].prop_map(Value::from),
        // Enum-ish words the spec uses in the wrong places, and junk.
        prop_oneof![
            Just("RLIMIT_NOFILE".to_owned()),
            Just("CAP_SYS_ADMIN".to_owned()),
            Just("SCMP_ACT_ALLOW".to_owned()),
            Just("network".to_owned()),
            Just("bind".to_owned()),
            Just("/".to_owned()),
            Just("../../etc".to_owned()),
            Just(String::new()),
            "[a-zA-Z_./-]{0,12}",
            "\\PC{0,8}",
        ]
        .prop_map(Value::from),
        (1usize..100_000).prop_map(|n| Value::from("x".repeat(n))),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => value().prop_map(Op::Replace),
        2 => Just(Op::Remove),
        1 => ("[a-zA-Z]{1,10}", value()).prop_map(|(k, v)| Op::AddField(k, v)),
        1 => (1usize..400, any::<bool>()).prop_map(|(depth, objects)| Op::Nest { depth, objects }),
    ]
}

/// Applies `op` at the node `pick` selects; returns the path it changed.
fn mutate(v: &mut Value, pick: usize, op: &Op) -> Vec<Seg> {
    let mut paths = Vec::new();
    all_paths(v, &mut Vec::new(), &mut paths);
    let path = paths[pick % paths.len()].clone();
    match op {
        Op::Replace(new) => *node_mut(v, &path) = new.clone(),
        Op::Remove => {
            if let Some((last, parent)) = path.split_last() {
                match (node_mut(v, parent), last) {
                    (Value::Object(m), Seg::Key(k)) => {
                        m.remove(k);
                    }
                    (Value::Array(a), Seg::Index(i)) => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        Op::AddField(k, new) => {
            let parent = path.split_last().map_or(&path[..0], |(_, p)| p);
            if let Value::Object(m) = node_mut(v, parent) {
                m.insert(k.clone(), new.clone());
                let mut p = parent.to_vec();
                p.push(Seg::Key(k.clone()));
                return p;
            }
        }
        Op::Nest { depth, objects } => {
            let n = node_mut(v, &path);
            let mut inner = n.take();
            for _ in 0..*depth {
                inner = if *objects {
                    json!({ "a": inner })
                } else {
                    json!([inner])
                };
            }
            *n = inner;
        }
    }
    path
}

/// A bundle directory with a rootfs, for one config at a time.
struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        Bundle { dir }
    }

    fn check(&self, config: &[u8], policy_all: bool) -> Result<(), OpError> {
        std::fs::write(self.dir.path().join("config.json"), config).unwrap();
        let opts = CreateOptions {
            bundle: self.dir.path().to_owned(),
            ..Default::default()
        };
        check_create(&opts, |k| {
            match k {
                "HUSK_MAX_MEMORY_MIB" => Some("4096"),
                "HUSK_MAX_VCPUS" => Some("4"),
                "HUSK_ENABLE_ANNOTATIONS" if policy_all => Some("husk.*"),
                _ => None,
            }
            .map(str::to_owned)
        })
        .map(|_| ())
    }
}

/// Whether `msg`, the reason a valid-JSON config was refused, names a
/// mutated path (or a path above or below one: a mistake inside a field
/// whose type oci-spec parses by hand shows at that field or deeper), or a
/// field found missing.
fn names_a_field(msg: &str, mutated: &[Vec<Seg>]) -> bool {
    if msg.starts_with("missing field `") || msg.starts_with("recursion limit exceeded") {
        return true;
    }
    let Some((reported, _)) = msg.split_once(": ") else {
        return false;
    };
    let related = |a: &str, b: &str| {
        a.strip_prefix(b)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    mutated.iter().any(|path| {
        let d = dotted(path);
        related(reported, &d) || related(&d, reported) || path.is_empty()
    }) || msg.contains("missing field `")
}

proptest! {
    #![proptest_config(config())]

    /// Mutations of a valid config: no panic; a refused parse names the
    /// field path.
    #[test]
    fn fuzz_config_mutations(
        muts in prop::collection::vec((any::<usize>(), op()), 1..5),
        policy_all in any::<bool>(),
    ) {
        let b = Bundle::new();
        let mut v = base();
        let mut mutated: Vec<Vec<Seg>> = Vec::new();
        for (pick, op) in &muts {
            let path = mutate(&mut v, *pick, op);
            if let (Op::Remove, Some((Seg::Index(i), parent))) = (op, path.split_last()) {
                // Later elements moved down one: so did earlier mutations.
                for m in &mut mutated {
                    if m.len() > parent.len() && m.starts_with(parent) {
                        if let Seg::Index(j) = &mut m[parent.len()] {
                            if *j > *i {
                                *j -= 1;
                            }
                        }
                    }
                }
            }
            mutated.push(path);
        }
        let json = serde_json::to_vec(&v).unwrap();
        match b.check(&json, policy_all) {
            Ok(()) => {}
            Err(OpError::Bundle(BundleError::Config { reason, .. })) => {
                prop_assert!(
                    names_a_field(&reason, &mutated),
                    "{reason:?} names none of {:?}",
                    mutated.iter().map(|p| dotted(p)).collect::<Vec<_>>()
                );
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Torn and corrupted bytes of a valid config: no panic, an error
    /// that says where.
    #[test]
    fn fuzz_config_bytes(cut in any::<usize>(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4)) {
        let b = Bundle::new();
        let mut json = serde_json::to_vec_pretty(&base()).unwrap();
        for (at, byte) in flips {
            let n = json.len();
            json[at % n] = byte;
        }
        json.truncate(cut % (json.len() + 1));
        if let Err(OpError::Bundle(BundleError::Config { reason, .. })) = b.check(&json, false) {
            prop_assert!(reason.contains(" line ") || reason.contains("EOF"), "{reason}");
        }
    }
}

/// The base config passes, and the field paths of typical mistakes show.
#[test]
fn config_errors_name_the_field() {
    let b = Bundle::new();
    b.check(&serde_json::to_vec(&base()).unwrap(), false)
        .expect("the base config is valid");
    let cases: [(&str, Value, &str); 6] = [
        (
            "/process/args",
            json!("sh"),
            "process.args: invalid type: string",
        ),
        (
            "/process/user/uid",
            json!(-1),
            "process.user.uid: invalid value",
        ),
        ("/mounts/1/type", json!(7), "mounts[1].type: invalid type"),
        (
            "/process/rlimits/0/type",
            json!("RLIMIT_NOPE"),
            "process.rlimits[0].type: unknown variant",
        ),
        (
            "/linux/resources/memory/limit",
            json!(u64::MAX),
            "linux.resources.memory.limit: invalid value",
        ),
        ("/root", json!(null), ""),
    ];
    for (ptr, bad, want) in cases {
        let mut v = base();
        *v.pointer_mut(ptr).unwrap() = bad;
        let e = b.check(&serde_json::to_vec(&v).unwrap(), false);
        if want.is_empty() {
            let e = e.expect_err(ptr).to_string();
            assert!(e.contains("root is missing"), "{e}");
            continue;
        }
        let Err(OpError::Bundle(BundleError::Config { reason, .. })) = e else {
            panic!("{ptr}: {e:?}");
        };
        assert!(reason.starts_with(want), "{ptr}: {reason}");
        assert!(reason.contains(" line "), "{reason}");
    }
}

/// A config.json without a network, IPC or PID namespace entry (runc then
/// shares the host's) is refused by `create` before anything is made,
/// naming the field and the fix: a VM cannot share the host's namespaces.
#[test]
fn a_config_sharing_a_host_namespace_is_refused_at_create() {
    let b = Bundle::new();
    for missing in ["network", "ipc", "pid"] {
        let mut v = base();
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != missing);
        let e = b
            .check(&serde_json::to_vec(&v).unwrap(), false)
            .expect_err(missing);
        let OpError::Bundle(BundleError::Invalid { reason, path }) = e else {
            panic!("{missing}: not an invalid-spec error: {e:?}");
        };
        assert!(path.ends_with("config.json"), "{}", path.display());
        assert!(
            reason.starts_with(&format!(
                "linux.namespaces has no {missing} namespace: the container would share the \
                 host's {missing} namespace, which a container in a VM cannot"
            )),
            "{reason}"
        );
        assert!(
            reason.contains(&format!("add {{\"type\": \"{missing}\"}}")),
            "{reason}"
        );
    }
}

/// A `linux.cgroupsPath` that cannot name a host cgroup of the
/// container's own is refused by the checks before anything is made,
/// naming the field; with `--systemd-cgroup` it must be
/// `slice:prefix:name`.
#[test]
fn a_cgroups_path_that_climbs_out_is_refused_at_create() {
    let b = Bundle::new();
    let check = |path: &str, systemd: bool| {
        let mut v = base();
        v["linux"]["cgroupsPath"] = json!(path);
        std::fs::write(b.dir.path().join("config.json"), v.to_string()).unwrap();
        let opts = CreateOptions {
            bundle: b.dir.path().to_owned(),
            systemd_cgroup: systemd,
            ..Default::default()
        };
        check_create(&opts, |_| None).map(|_| ())
    };
    check("/kubepods/pod1/c", false).expect("an absolute path");
    check("kubepods-pod1.slice:cri-containerd:c", true).expect("a systemd path");
    for (path, systemd, why) in [
        ("/kubepods/../../etc", false, "\"..\""),
        ("/", false, "root cgroup"),
        ("/kubepods/pod1/c", true, "slice:prefix:name"),
        ("kubepods--x.slice:p:c", true, "invalid slice name"),
    ] {
        let e = check(path, systemd).expect_err(path).to_string();
        assert!(
            e.starts_with(&format!("linux.cgroupsPath {path:?}: ")),
            "{e}"
        );
        assert!(e.contains(why), "{e}");
    }
}
