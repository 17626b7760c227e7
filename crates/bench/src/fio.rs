//! The block workload's fio side: the job list (the same in all three
//! environments) and the figures taken from fio's JSON report.
//!
//! Four jobs, one after the other (`--stonewall`), each one pass over the
//! scratch target (at most [`JOB_RUNTIME_S`] seconds): sequential read and
//! write in 1 MiB blocks at queue depth 4, random 4 KiB read and write at
//! queue depth 16, libaio, `--thread` (fio's shared state then needs only
//! SysV IPC). Write jobs end with an fsync, so data a cache accepted is
//! counted only once it was flushed.

use serde_json::Value;

/// Upper bound on one fio job.
pub const JOB_RUNTIME_S: u64 = 30;

/// The four job names, in the order of the block rows.
pub const JOBS: [&str; 4] = ["seq-read", "seq-write", "rand-read", "rand-write"];

/// The fio command line (a sh fragment; the target comes from
/// `$BENCH_TARGET`). `direct`: O_DIRECT (bypass the page cache).
pub fn command(size_mib: u64, direct: bool) -> String {
    format!(
        "fio --thread --output-format=json --filename=\"$BENCH_TARGET\" --size={size_mib}M \
         --direct={} --ioengine=libaio --runtime={JOB_RUNTIME_S} --stonewall \
         --name=seq-read --rw=read --bs=1M --iodepth=4 \
         --name=seq-write --rw=write --bs=1M --iodepth=4 --end_fsync=1 \
         --name=rand-read --rw=randread --bs=4k --iodepth=16 \
         --name=rand-write --rw=randwrite --bs=4k --iodepth=16 --end_fsync=1",
        u8::from(direct)
    )
}

/// The block rows from fio's JSON output (`text` may carry other lines
/// before and after the JSON object): sequential read and write in MiB/s,
/// random read and write in IOPS.
pub fn parse(text: &str) -> Result<[f64; 4], String> {
    let start = text
        .find('{')
        .ok_or("fio printed no JSON report (see its stderr)")?;
    let end = text.rfind('}').ok_or("fio's JSON report is cut short")?;
    if end < start {
        return Err("fio's JSON report is cut short".into());
    }
    let v: Value = serde_json::from_str(&text[start..=end])
        .map_err(|e| format!("cannot parse fio's JSON report: {e}"))?;
    let jobs = v["jobs"]
        .as_array()
        .ok_or("fio's JSON report has no \"jobs\" list")?;
    let job = |name: &str| -> Result<&Value, String> {
        let j = jobs
            .iter()
            .find(|j| j["jobname"] == name)
            .ok_or_else(|| format!("fio's report has no job {name}"))?;
        match j["error"].as_i64() {
            Some(0) => Ok(j),
            Some(e) => Err(format!("fio job {name} failed with error {e}")),
            None => Err(format!("fio job {name} has no error field")),
        }
    };
    let num = |j: &Value, dir: &str, key: &str, name: &str| -> Result<f64, String> {
        let x = j[dir][key]
            .as_f64()
            .ok_or_else(|| format!("fio job {name} has no {dir}.{key}"))?;
        if j[dir]["io_bytes"].as_u64() == Some(0) || x <= 0.0 {
            return Err(format!("fio job {name} moved no data ({dir}.{key} = {x})"));
        }
        Ok(x)
    };
    // bw is in KiB/s.
    Ok([
        num(job(JOBS[0])?, "read", "bw", JOBS[0])? / 1024.0,
        num(job(JOBS[1])?, "write", "bw", JOBS[1])? / 1024.0,
        num(job(JOBS[2])?, "read", "iops", JOBS[2])?,
        num(job(JOBS[3])?, "write", "iops", JOBS[3])?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real report: fio 3.33 from the bench initramfs, run on a host
    /// with `command(16, true)`.
    const SAMPLE: &str = include_str!("../../../resources/bench/testdata/fio-host.json");

    #[test]
    fn real_report() {
        let [sr, sw, rr, rw] = parse(SAMPLE).unwrap();
        // seq-read: "bw" : 468114 (KiB/s); seq-write 309132; IOPS as given.
        assert!((sr - 468114.0 / 1024.0).abs() < 1e-9, "{sr}");
        assert!((sw - 309132.0 / 1024.0).abs() < 1e-9, "{sw}");
        assert!((rr - 73142.857143).abs() < 1e-6, "{rr}");
        assert!((rw - 49349.39759).abs() < 1e-6, "{rw}");
    }

    #[test]
    fn surrounding_noise_is_ignored() {
        let text = format!("fio: some warning\n{SAMPLE}\nkvmini-bench-done\n");
        assert_eq!(parse(&text).unwrap(), parse(SAMPLE).unwrap());
    }

    #[test]
    fn bad_reports_say_why() {
        assert!(parse("").unwrap_err().contains("no JSON"));
        assert!(parse("{ \"jobs\": [").is_err());
        assert!(parse("{}").unwrap_err().contains("jobs"));
        let failed = SAMPLE.replacen("\"error\" : 0", "\"error\" : 5", 1);
        assert!(parse(&failed)
            .unwrap_err()
            .contains("seq-read failed with error 5"));
        let missing = SAMPLE.replace("\"rand-write\"", "\"other\"");
        assert!(parse(&missing).unwrap_err().contains("no job rand-write"));
    }

    #[test]
    fn command_is_the_same_everywhere_but_direct() {
        let c = command(256, true);
        assert!(c.contains("--size=256M") && c.contains("--direct=1"), "{c}");
        assert!(c.contains("--filename=\"$BENCH_TARGET\""));
        for j in JOBS {
            assert!(c.contains(&format!("--name={j} ")), "{j}");
        }
        assert!(command(16, false).contains("--direct=0"));
    }
}
