//! The agent's cgroup v2 numbers as containerd's `io.containerd.cgroups.v2.Metrics`.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::MessageField;
use husk_protocol::CgroupStats;

/// Maps the agent's stats; missing controllers stay unset.
pub fn to_metrics(s: &CgroupStats) -> Metrics {
    let mut m = Metrics::new();
    if s.pids_current.is_some() || s.pids_limit.is_some() {
        let mut p = PidsStat::new();
        p.current = s.pids_current.unwrap_or(0);
        p.limit = s.pids_limit.unwrap_or(0);
        m.pids = MessageField::some(p);
    }
    if s.cpu_usage_usec.is_some() {
        let mut c = CPUStat::new();
        c.usage_usec = s.cpu_usage_usec.unwrap_or(0);
        c.user_usec = s.cpu_user_usec.unwrap_or(0);
        c.system_usec = s.cpu_system_usec.unwrap_or(0);
        m.cpu = MessageField::some(c);
    }
    if s.memory_usage.is_some() {
        let mut mem = MemoryStat::new();
        mem.usage = s.memory_usage.unwrap_or(0);
        // "max" (no limit) is reported as the largest value, as cgroups does.
        mem.usage_limit = s.memory_limit.unwrap_or(u64::MAX);
        for (k, v) in &s.memory_stat {
            match k.as_str() {
                "anon" => mem.anon = *v,
                "file" => mem.file = *v,
                "kernel_stack" => mem.kernel_stack = *v,
                "slab" => mem.slab = *v,
                "sock" => mem.sock = *v,
                "shmem" => mem.shmem = *v,
                "file_mapped" => mem.file_mapped = *v,
                "file_dirty" => mem.file_dirty = *v,
                "pgfault" => mem.pgfault = *v,
                "pgmajfault" => mem.pgmajfault = *v,
                _ => {}
            }
        }
        m.memory = MessageField::some(mem);
    }
    if !s.memory_events.is_empty() {
        let mut ev = MemoryEvents::new();
        for (k, v) in &s.memory_events {
            match k.as_str() {
                "low" => ev.low = *v,
                "high" => ev.high = *v,
                "max" => ev.max = *v,
                "oom" => ev.oom = *v,
                "oom_kill" => ev.oom_kill = *v,
                "oom_group_kill" => ev.oom_group_kill = *v,
                _ => {}
            }
        }
        m.memory_events = MessageField::some(ev);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_what_is_there() {
        let s = CgroupStats {
            memory_usage: Some(4096),
            memory_limit: None,
            memory_stat: vec![("anon".into(), 1000), ("file".into(), 2000)],
            cpu_usage_usec: Some(10),
            cpu_user_usec: Some(7),
            cpu_system_usec: Some(3),
            pids_current: Some(2),
            pids_limit: Some(100),
            memory_events: vec![("max".into(), 9), ("oom_kill".into(), 1)],
        };
        let m = to_metrics(&s);
        assert_eq!((m.pids.current, m.pids.limit), (2, 100));
        assert_eq!((m.cpu.usage_usec, m.cpu.user_usec), (10, 7));
        assert_eq!(
            (
                m.memory.usage,
                m.memory.usage_limit,
                m.memory.anon,
                m.memory.file
            ),
            (4096, u64::MAX, 1000, 2000)
        );
        let ev = &m.memory_events;
        assert_eq!((ev.max, ev.oom, ev.oom_kill), (9, 0, 1));
        let empty = to_metrics(&CgroupStats::default());
        assert!(empty.pids.is_none() && empty.cpu.is_none() && empty.memory.is_none());
        assert!(empty.memory_events.is_none());
    }
}
