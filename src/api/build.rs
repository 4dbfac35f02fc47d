//! Embeds the web UI (`ui/dist`, built by `npm run build` in `ui/`) into the binary, gzip
//! pre-compressed, with the brotli copies (`name.br`) that the UI build made of its text files
//! (a copy older than its file is stale and left out). Each encoding of a file has its own strong
//! ETag, a hash of exactly the bytes sent (RFC 9110 8.8.3: a strong validator differs between
//! content codings), so it depends on the build alone, never on when the binary started. If the
//! UI was not built, embeds one page that says so and how to build it, so `cargo build` alone
//! never fails.

use std::io::Write;
use std::path::{Path, PathBuf};

const NOT_BUILT: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Cairn</title>
<meta name="viewport" content="width=device-width,initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto;padding:0 1em">
<h1>Cairn</h1><p>The web UI was not built into this binary. The API works at <code>/api/v1</code>.</p>
<p>To build the UI: <code>cd ui &amp;&amp; npm ci &amp;&amp; npm run build</code>, then rebuild the binary
(<code>cargo build</code>). <code>ci/setup.sh</code> does both steps.</p></body></html>"#;

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The strong ETag of one encoding of a file: the start of the SHA-256 of the bytes sent. Keep in
/// step with `assets::tests::etags_are_hashes_of_the_bytes_sent`.
fn etag(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("\"{}\"", &hex(&sha2::Sha256::digest(bytes))[..20])
}

/// Rust source for one `Encoded` value: the file `path` embedded, and the ETag of `bytes` (its
/// content).
fn encoded(path: &Path, bytes: &[u8]) -> String {
    format!(
        "Encoded {{ bytes: include_bytes!({:?}), etag: {:?} }}",
        path.display().to_string(),
        etag(bytes)
    )
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let ui = manifest.join("../../ui");
    let dist = ui.join("dist");
    let built = dist.join("index.html").is_file();
    if built {
        println!("cargo:rerun-if-changed={}", dist.display());
    } else {
        println!(
            "cargo:rerun-if-changed={}",
            ui.join("package.json").display()
        );
        println!("cargo:rerun-if-changed={}", ui.display());
    }
    // Path, content, and the UI build's brotli copy of it if there is a current one.
    let mut files: Vec<(String, Vec<u8>, Option<PathBuf>)> = Vec::new();
    if built {
        let mut paths = Vec::new();
        walk(&dist, &mut paths);
        for p in paths {
            let rel = p
                .strip_prefix(&dist)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel.ends_with(".map")
                || rel.ends_with(".gz")
                || rel.ends_with(".br")
                || rel.starts_with('.')
            {
                continue;
            }
            let br = PathBuf::from(format!("{}.br", p.display()));
            let modified = |f: &Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
            let br = match (modified(&br), modified(&p)) {
                (Some(b), Some(f)) if b >= f => Some(br),
                _ => None,
            };
            files.push((format!("/{rel}"), std::fs::read(&p).unwrap(), br));
        }
    } else {
        files.push(("/index.html".into(), NOT_BUILT.as_bytes().to_vec(), None));
    }
    let mut code = String::new();
    code.push_str(&format!("const UI_BUILT: bool = {built};\n"));
    code.push_str("static ASSETS: &[Asset] = &[\n");
    for (i, (path, data, br)) in files.iter().enumerate() {
        let raw = out.join(format!("asset{i}"));
        std::fs::write(&raw, data).unwrap();
        let ct = content_type(Path::new(path));
        let compressible = ct.starts_with("text/") || ct.contains("json") || ct.contains("svg");
        let gz = if compressible && data.len() > 256 {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data).unwrap();
            let g = e.finish().unwrap();
            let gp = out.join(format!("asset{i}.gz"));
            std::fs::write(&gp, &g).unwrap();
            format!("Some({})", encoded(&gp, &g))
        } else {
            "None".into()
        };
        let br = match br {
            Some(b) if compressible => {
                // A copy, so the bytes embedded are the ones hashed even if the UI is rebuilt
                // meanwhile.
                let copy = out.join(format!("asset{i}.br"));
                let bytes = std::fs::read(b).unwrap();
                std::fs::write(&copy, &bytes).unwrap();
                format!("Some({})", encoded(&copy, &bytes))
            }
            _ => "None".into(),
        };
        code.push_str(&format!(
            "    Asset {{ path: {path:?}, content_type: {ct:?}, raw: {}, gzip: {gz}, br: {br} }},\n",
            encoded(&raw, data)
        ));
    }
    code.push_str("];\n");
    std::fs::write(out.join("ui_assets.rs"), code).unwrap();
}
