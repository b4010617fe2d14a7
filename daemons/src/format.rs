//! How the CLI and `top` print what the cluster reports: times, sizes,
//! the `stat` screen.

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC) of a time in ms since the Unix epoch.
pub fn format_time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// `drwxr-sr-x`: the kind letter and the permission bits as `ls -l` shows
/// them (set-id and sticky bits as `s`/`S` and `t`/`T`).
pub fn format_mode(kind: pstorage_core::types::InodeKind, mode: u32) -> String {
    let bit = |b: u32, c: char| if mode & b != 0 { c } else { '-' };
    let special = |x: u32, s: u32, set: char| match (mode & x != 0, mode & s != 0) {
        (true, true) => set,
        (false, true) => set.to_ascii_uppercase(),
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind.ls_letter(),
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't'),
    ]
    .iter()
    .collect()
}

/// One line of `pstorage ls -l`: mode, links, owner, group, replication,
/// size (a device's numbers), the modification time (UTC, to the minute)
/// and the name.
pub fn format_ls_line(e: &pstorage_core::types::DirEntry) -> String {
    use pstorage_core::types::InodeKind;
    let st = &e.stat;
    let size = match st.kind {
        InodeKind::CharDevice | InodeKind::BlockDevice => {
            format!("{}, {}", st.rdev >> 8 & 0xfff, st.rdev & 0xff)
        }
        _ => st.size.to_string(),
    };
    let time = format_time_ms(st.mtime.as_ms());
    format!(
        "{} {:>3} {:>5} {:>5} {:>5} {:>14} {} {}",
        format_mode(st.kind, st.mode),
        st.nlink,
        st.uid,
        st.gid,
        st.attrs.replicas.to_string(),
        size,
        &time[..16],
        e.name
    )
}

/// The text of `pstorage stat` (and of each `top` screen).
pub fn format_status(s: &pstorage_core::types::ClusterStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let c = &s.chunk_counts;
    let r = &s.replication;
    let _ = writeln!(out, "Cluster '{}': {}", s.cluster_name, s.health);
    let _ = writeln!(
        out,
        "Space: {} chunk servers, {} total, {} free; {} files, {} directories, {} logical",
        s.cs.len(),
        human(s.cs.iter().map(|c| c.space.total_bytes).sum()),
        human(s.cs.iter().map(|c| c.space.free_bytes).sum()),
        s.files,
        s.dirs,
        human(s.logical_bytes)
    );
    let _ = writeln!(
        out,
        "Chunks: {} total: {} healthy, {} degraded, {} urgent, {} blocked, {} replicating",
        s.chunks, c.healthy, c.degraded, c.urgent, c.blocked, c.replicating
    );
    let eta = match r.eta_s {
        _ if r.remaining_bytes == 0 => "-".to_string(),
        None => "unknown".to_string(),
        Some(s) if s >= 3600 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        Some(s) => format!("{}m{:02}s", s / 60, s % 60),
    };
    let _ = writeln!(
        out,
        "Replication: {} chunk(s) pending, {} in flight, {} done ({}), {} failed; {}/s, {} sent, {} left, ETA {}",
        r.pending_chunks,
        r.in_flight,
        r.done_chunks,
        human(r.done_bytes),
        r.failed_chunks,
        human(r.rate_bytes_per_s),
        human(r.copied_bytes),
        human(r.remaining_bytes),
        eta
    );
    let b = &s.rebalance;
    let _ = writeln!(
        out,
        "Rebalancing: {}, {} move(s) in flight, {} done, {} pending; fullness spread {}.{}%",
        b.state,
        b.in_flight,
        b.done,
        b.pending,
        b.spread_permille / 10,
        b.spread_permille % 10
    );
    for t in &s.tiers {
        let _ = writeln!(
            out,
            "Tier {}: {} chunk server(s), {} capacity, {} held, {} free",
            t.tier,
            t.servers,
            human(t.capacity_bytes),
            human(t.held_bytes),
            human(t.free_bytes)
        );
    }
    for w in &s.warnings {
        let _ = writeln!(out, "WARNING: {w}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "MDS nodes: {}", s.mds.len());
    let _ = writeln!(
        out,
        "{:>6}  {:<11} {:<22} {:>6} {:>10} {:>10} {:>6}",
        "MDSID", "ROLE", "ADDRESS", "TERM", "COMMIT", "APPLIED", "LAG"
    );
    for m in &s.mds {
        let _ = writeln!(
            out,
            "{:>6}  {:<11} {:<22} {:>6} {:>10} {:>10} {:>6}",
            m.id, m.role, m.addr, m.term, m.commit_index, m.applied_index, m.lag
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "CS nodes: {}", s.cs.len());
    let _ = writeln!(
        out,
        "{:>6}  {:<16} {:<22} {:>8} {:>8} {:>7} {:>10} {:>8} {:>8} {:>9} {:>9} {:>4} {:>6} {:>13}  {:<16} LOCATION",
        "CSID",
        "STATUS",
        "ADDRESS",
        "SPACE",
        "FREE",
        "CHUNKS",
        "SEEN",
        "RD/S",
        "WR/S",
        "RD_B/S",
        "WR_B/S",
        "TIER",
        "FULL%",
        "JOURNAL",
        "HOST"
    );
    for c in &s.cs {
        let seen = if c.last_seen_ms_ago == u64::MAX {
            "never".to_string()
        } else {
            format!("{:.1}s ago", c.last_seen_ms_ago as f64 / 1000.0)
        };
        let mut status = c.status.to_string();
        if c.releasing {
            status.push_str(",releasing");
        }
        if c.full {
            status.push_str(",full");
        }
        let fullness = if c.capacity_bytes == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.1}",
                c.held_bytes as f64 * 100.0 / c.capacity_bytes as f64
            )
        };
        let host = if c.host.is_empty() { "-" } else { &c.host };
        // Bytes not yet applied to the chunk files, of the journal's size.
        let journal = if c.journal_bytes == 0 {
            "-".to_string()
        } else {
            format!("{}/{}", human(c.journal_used_bytes), human(c.journal_bytes))
        };
        let _ = writeln!(
            out,
            "{:>6}  {:<16} {:<22} {:>8} {:>8} {:>7} {:>10} {:>8} {:>8} {:>9} {:>9} {:>4} {:>6} {:>13}  {:<16} {}",
            c.id,
            status,
            c.addr,
            human(c.space.total_bytes),
            human(c.space.free_bytes),
            c.chunks,
            seen,
            c.io.read_ops_per_s,
            c.io.write_ops_per_s,
            human(c.io.read_bytes_per_s),
            human(c.io.write_bytes_per_s),
            c.tier,
            fullness,
            journal,
            host,
            c.location
        );
    }
    out
}

/// `1.5G`-style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
