//! Running fio (the anchor) and reading its JSON output.

use std::process::Command;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Default)]
pub struct FioResult {
    /// Sum over jobs.
    pub iops: f64,
    pub bw_bytes: f64,
    /// usr+sys CPU seconds over all jobs (fio reports percentages of each job's runtime).
    pub cpu_secs: f64,
    /// Worst job's p99 completion latency.
    pub p99_ns: f64,
    pub jobs: usize,
    /// Completed I/Os over all jobs.
    pub ios: f64,
}

/// Run fio with `args` (which must not include --output-format) and collect the totals.
pub fn run(args: &[String]) -> Result<FioResult> {
    let out = Command::new("fio")
        .args(args)
        .arg("--output-format=json")
        .output()
        .context("run fio (is it installed? ci/setup.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "fio {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // fio may print warnings before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').context("fio printed no JSON")?;
    parse(&text[start..])
}

pub fn parse(json: &str) -> Result<FioResult> {
    let v: serde_json::Value = serde_json::from_str(json).context("parse fio JSON")?;
    let jobs = v["jobs"].as_array().context("fio JSON has no jobs")?;
    let mut r = FioResult {
        jobs: jobs.len(),
        ..Default::default()
    };
    for j in jobs {
        let runtime_s = j["job_runtime"].as_f64().unwrap_or(0.0) / 1000.0;
        let cpu_pct = j["usr_cpu"].as_f64().unwrap_or(0.0) + j["sys_cpu"].as_f64().unwrap_or(0.0);
        r.cpu_secs += cpu_pct / 100.0 * runtime_s;
        for dir in ["read", "write"] {
            let d = &j[dir];
            r.iops += d["iops"].as_f64().unwrap_or(0.0);
            r.bw_bytes += d["bw_bytes"].as_f64().unwrap_or(0.0);
            r.ios += d["total_ios"].as_f64().unwrap_or(0.0);
            if let Some(p) = d["clat_ns"]["percentile"]["99.000000"].as_f64() {
                r.p99_ns = r.p99_ns.max(p);
            }
        }
    }
    if r.jobs == 0 || r.ios == 0.0 {
        bail!("fio completed no I/O");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fio_totals() {
        let json = r#"{"jobs":[
          {"job_runtime":2000,"usr_cpu":10.0,"sys_cpu":15.0,
           "read":{"iops":1000.0,"bw_bytes":4096000,"total_ios":2000,"clat_ns":{"percentile":{"99.000000":50000}}},
           "write":{"iops":0,"bw_bytes":0}},
          {"job_runtime":2000,"usr_cpu":5.0,"sys_cpu":20.0,
           "read":{"iops":500.0,"bw_bytes":2048000,"clat_ns":{"percentile":{"99.000000":80000}}},
           "write":{"iops":0,"bw_bytes":0}}]}"#;
        let r = super::parse(json).unwrap();
        assert_eq!(r.jobs, 2);
        assert!((r.iops - 1500.0).abs() < 1e-9);
        assert!((r.cpu_secs - 1.0).abs() < 1e-9);
        assert!((r.p99_ns - 80000.0).abs() < 1e-9);
    }
}
