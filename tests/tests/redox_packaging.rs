//! Checks the Redox packaging under `image/redox/`: every TOML file there
//! parses, has exactly the fields the Redox tools read (a misspelt key fails
//! here instead of being silently ignored by the cookbook, the installer or
//! pcid-spawner), and fits the rest of the repository (the recipe builds
//! binaries that exist and installs files that exist; the pcid entries start
//! the program the recipe installs; the image config carries the same match
//! entry as the repository copy).
//!
//! The field lists follow the Redox sources as of 2025-11 to 2026-08:
//! `src/recipe.rs` of the build system (`redox-os/redox`), `src/config/*.rs`
//! of `redox-os/installer`, and `drivers/pcid/src/driver_interface/config.rs`
//! with `drivers/pcid-spawner/src/main.rs` of `redox-os/base` (as in the
//! snapshot `pddgpu-image redox-boot` builds). They are parsed with the
//! `toml` 0.8 series (TOML 1.0), as the cookbook and installer do.
//!
//! `image/redox/initfs/` is the initfs tree of the image `redox-boot` boots
//! (copied verbatim into the initfs root): its `etc/init.rc` must start the
//! daemons, pcid-spawner on our match entries and the scenario, and those
//! entries must start the driver from the initfs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn redox_dir() -> PathBuf {
    repo_root().join("image/redox")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every `*.toml` below `dir`, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// pcid-spawner driver match entries (`/usr/lib/pcid.d/*.toml`)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PcidConfig {
    #[serde(default)]
    drivers: Vec<DriverEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DriverEntry {
    name: Option<String>,
    class: Option<u8>,
    subclass: Option<u8>,
    interface: Option<u8>,
    ids: Option<BTreeMap<String, Vec<u16>>>,
    vendor: Option<u16>,
    device: Option<u16>,
    device_id_range: Option<std::ops::Range<u16>>,
    command: Vec<String>,
}

/// A PCI function as pcid-spawner sees it.
#[derive(Clone, Copy, Debug)]
struct Func {
    vendor: u16,
    device: u16,
    class: u8,
    subclass: u8,
    interface: u8,
}

const BOCHS_DISPLAY: Func = Func {
    vendor: 0x1234,
    device: 0x1111,
    class: 0x03,
    subclass: 0x80,
    interface: 0,
};
const STD_VGA: Func = Func {
    vendor: 0x1234,
    device: 0x1111,
    class: 0x03,
    subclass: 0x00,
    interface: 0,
};
const E1000: Func = Func {
    vendor: 0x8086,
    device: 0x100e,
    class: 0x02,
    subclass: 0x00,
    interface: 0,
};

fn parse_vendor_key(key: &str) -> Result<u16, String> {
    let hex = key.strip_prefix("0x").unwrap_or(key);
    u16::from_str_radix(hex, 16).map_err(|_| format!("ids key {key:?} is not a hex vendor id"))
}

impl DriverEntry {
    /// pcid-spawner's matching rule: every given field must agree; `ids`
    /// replaces `vendor`/`device` when present.
    fn matches(&self, f: &Func) -> bool {
        let eq8 = |want: Option<u8>, have: u8| want.is_none_or(|w| w == have);
        let eq16 = |want: Option<u16>, have: u16| want.is_none_or(|w| w == have);
        if !(eq8(self.class, f.class)
            && eq8(self.subclass, f.subclass)
            && eq8(self.interface, f.interface))
        {
            return false;
        }
        let id_ok = match &self.ids {
            Some(ids) => ids.iter().any(|(v, devs)| {
                parse_vendor_key(v).is_ok_and(|v| v == f.vendor) && devs.contains(&f.device)
            }),
            None => eq16(self.vendor, f.vendor) && eq16(self.device, f.device),
        };
        id_ok
            && self
                .device_id_range
                .as_ref()
                .is_none_or(|r| r.contains(&f.device))
    }

    /// What pcid-spawner needs beyond parsing, and what keeps an entry from
    /// grabbing devices it should not.
    fn check(&self) -> Result<(), String> {
        let program = self
            .command
            .first()
            .ok_or("`command` is empty: pcid-spawner would fail")?;
        if program.is_empty() {
            return Err("`command` starts with an empty program name".into());
        }
        if self.name.as_deref().is_none_or(str::is_empty) {
            return Err("entry has no `name`".into());
        }
        let has_id = self.vendor.is_some() || self.ids.as_ref().is_some_and(|i| !i.is_empty());
        if !has_id {
            return Err(format!(
                "entry {:?} names no vendor: it would match every device of its class",
                self.name
            ));
        }
        if self.ids.is_some() && (self.vendor.is_some() || self.device.is_some()) {
            return Err(
                "`ids` and `vendor`/`device` together: pcid-spawner ignores the latter".into(),
            );
        }
        for (v, devs) in self.ids.iter().flatten() {
            parse_vendor_key(v)?;
            if devs.is_empty() {
                return Err(format!("ids {v:?} lists no device"));
            }
        }
        if self.device_id_range.as_ref().is_some_and(|r| r.is_empty()) {
            return Err("`device_id_range` is empty".into());
        }
        Ok(())
    }
}

/// The program an entry starts, as an absolute path (pcid-spawner resolves
/// relative names in /usr/lib/drivers).
fn program_path(entry: &DriverEntry) -> String {
    let p = &entry.command[0];
    if p.starts_with('/') {
        p.clone()
    } else {
        format!("/usr/lib/drivers/{p}")
    }
}

fn check_pcid_text(path: &Path, text: &str) -> Result<PcidConfig, String> {
    let cfg: PcidConfig = parse(path, text)?;
    if cfg.drivers.is_empty() {
        return Err(format!("{}: no [[drivers]] entry", path.display()));
    }
    for d in &cfg.drivers {
        d.check().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(cfg)
}

/// pcid-spawner reads every file of /usr/lib/pcid.d and /etc/pcid.d in
/// file-name order (a name in /etc replacing the same name in /usr/lib),
/// concatenates them, parses the result as one document and starts the first
/// entry that matches.
fn spawner_choice(files: &BTreeMap<String, String>, f: &Func) -> Option<DriverEntry> {
    let all: String = files.values().map(String::as_str).collect();
    let cfg: PcidConfig = toml::from_str(&all).expect("concatenated pcid.d parses");
    cfg.drivers.into_iter().find(|d| d.matches(f))
}

// ---------------------------------------------------------------------------
// Cookbook recipes (`recipes/**/recipe.toml`)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // some fields are only read by serde, to reject unknown keys
struct Recipe {
    source: Option<Source>,
    build: Build,
    #[serde(default)]
    package: Option<PackageMeta>,
    #[serde(default, rename = "optional-packages")]
    optional_packages: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
#[allow(dead_code)] // the fields are read by serde, to reject unknown keys
enum Source {
    SameAs {
        same_as: String,
    },
    Path {
        path: String,
    },
    Git {
        git: String,
        upstream: Option<String>,
        branch: Option<String>,
        rev: Option<String>,
        shallow_clone: Option<bool>,
        #[serde(default)]
        patches: Vec<String>,
        script: Option<String>,
    },
    Tar {
        tar: String,
        blake3: Option<String>,
        #[serde(default)]
        patches: Vec<String>,
        script: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // some fields are only read by serde, to reject unknown keys
struct Build {
    template: String,
    script: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default, rename = "dev-dependencies")]
    dev_dependencies: Vec<String>,
    cargopath: Option<String>,
    #[serde(default)]
    cargoflags: Vec<String>,
    #[serde(default)]
    cargopackages: Vec<String>,
    #[serde(default)]
    cargoexamples: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the fields are read by serde, to reject unknown keys
struct PackageMeta {
    #[serde(default)]
    dependencies: Vec<String>,
    version: Option<String>,
    description: Option<String>,
}

const TEMPLATES: [&str; 8] = [
    "none",
    "remote",
    "cargo",
    "configure",
    "cmake",
    "meson",
    "python",
    "custom",
];

/// Packages and binary targets of the workspace: package name -> bin names.
fn workspace_bins() -> BTreeMap<String, BTreeSet<String>> {
    #[derive(Deserialize)]
    struct Ws {
        workspace: WsInner,
    }
    #[derive(Deserialize)]
    struct WsInner {
        members: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Manifest {
        package: Pkg,
        #[serde(default)]
        bin: Vec<Bin>,
    }
    #[derive(Deserialize)]
    struct Pkg {
        name: String,
    }
    #[derive(Deserialize)]
    struct Bin {
        name: String,
    }
    let root = repo_root();
    let ws: Ws = toml::from_str(&read(&root.join("Cargo.toml"))).expect("root manifest");
    let mut out = BTreeMap::new();
    for m in ws.workspace.members {
        let dir = root.join(&m);
        let man: Manifest =
            toml::from_str(&read(&dir.join("Cargo.toml"))).expect("member manifest");
        let mut bins: BTreeSet<String> = man.bin.into_iter().map(|b| b.name).collect();
        if dir.join("src/main.rs").exists() {
            bins.insert(man.package.name.clone());
        }
        if let Ok(rd) = fs::read_dir(dir.join("src/bin")) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "rs") {
                    bins.insert(p.file_stem().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        out.insert(man.package.name, bins);
    }
    out
}

/// The values following `flag` in a shell script (`-p x`, `--bin y`).
fn flag_values<'a>(script: &'a str, flag: &str) -> Vec<&'a str> {
    let words: Vec<&str> = script.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].trim_matches('"'))
        .collect()
}

/// Paths a script reads from the source tree: `"${COOKBOOK_SOURCE}/x"`.
fn source_paths(script: &str) -> Vec<String> {
    script
        .split("${COOKBOOK_SOURCE}/")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| c == '"' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// Files a script installs: `cp -v <from> "${COOKBOOK_STAGE}/<to>"`.
fn staged_files(script: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in script.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"cp") {
            continue;
        }
        if let Some(dest) = words.last() {
            if let Some(p) = dest.trim_matches('"').strip_prefix("${COOKBOOK_STAGE}") {
                out.insert(p.to_string());
            }
        }
    }
    out
}

struct RecipeFacts {
    name: String,
    staged: BTreeSet<String>,
}

fn check_recipe(path: &Path, text: &str) -> Result<RecipeFacts, String> {
    let at = |e: String| format!("{}: {e}", path.display());
    let recipe: Recipe = parse(path, text)?;
    let b = &recipe.build;
    if !TEMPLATES.contains(&b.template.as_str()) {
        return Err(at(format!("unknown build template {:?}", b.template)));
    }
    let script = match (b.template.as_str(), &b.script) {
        ("custom", Some(s)) if !s.trim().is_empty() => s.as_str(),
        ("custom", _) => return Err(at("template \"custom\" needs a script".into())),
        (_, Some(_)) => return Err(at("`script` is only read by the custom template".into())),
        (_, None) => "",
    };
    let ws = workspace_bins();
    let packages = flag_values(script, "-p");
    let bins = flag_values(script, "--bin");
    for p in packages
        .iter()
        .copied()
        .chain(b.cargopackages.iter().map(String::as_str))
    {
        if !ws.contains_key(p) {
            return Err(at(format!(
                "builds package {p:?}, which is not in the workspace"
            )));
        }
    }
    for bin in &bins {
        if !packages.iter().any(|p| ws[*p].contains(*bin)) {
            return Err(at(format!(
                "builds binary {bin:?}, which none of the packages {packages:?} has"
            )));
        }
    }
    for src in source_paths(script) {
        if !repo_root().join(&src).exists() {
            return Err(at(format!(
                "copies {src:?} from the source tree, which does not exist"
            )));
        }
    }
    let staged = staged_files(script);
    for s in &staged {
        if let Some(name) = s
            .strip_prefix("/usr/lib/drivers/")
            .or(s.strip_prefix("/usr/bin/"))
        {
            if !bins.contains(&name) {
                return Err(at(format!(
                    "installs {s} but does not build a binary {name:?}"
                )));
            }
        }
    }
    let name = path
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| at("recipe.toml must sit in a directory named after the package".into()))?;
    Ok(RecipeFacts { name, staged })
}

// ---------------------------------------------------------------------------
// Installer filesystem configs (`config/*.toml`)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // some fields are only read by serde, to reject unknown keys
struct FsConfig {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    general: General,
    #[serde(default)]
    packages: BTreeMap<String, PackageRule>,
    #[serde(default)]
    files: Vec<FileEntry>,
    #[serde(default)]
    users: BTreeMap<String, toml::Value>,
    #[serde(default)]
    groups: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the fields are read by serde, to reject unknown keys
struct General {
    cookbook: Option<String>,
    prompt: Option<bool>,
    filesystem_size: Option<u32>,
    efi_partition_size: Option<u32>,
    skip_partitions: Option<bool>,
    encrypt_disk: Option<String>,
    live_disk: Option<bool>,
    write_bootloader: Option<String>,
    no_mount: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[allow(dead_code)] // the spec is read by serde, to reject unknown keys
enum PackageRule {
    Rule(String),
    Spec(PackageSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the fields are read by serde, to reject unknown keys
struct PackageSpec {
    version: Option<String>,
    git: Option<String>,
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // some fields are only read by serde, to reject unknown keys
struct FileEntry {
    path: String,
    data: String,
    #[serde(default)]
    symlink: bool,
    #[serde(default)]
    directory: bool,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    #[serde(default)]
    recursive_chown: bool,
    #[serde(default)]
    postinstall: bool,
    #[serde(default)]
    append: bool,
}

const PACKAGE_RULES: [&str; 4] = ["source", "local", "binary", "ignore"];

fn check_fs_config(
    path: &Path,
    text: &str,
    recipes: &BTreeMap<String, RecipeFacts>,
) -> Result<FsConfig, String> {
    let at = |e: String| format!("{}: {e}", path.display());
    let cfg: FsConfig = parse(path, text)?;
    for inc in &cfg.include {
        if !inc.ends_with(".toml") || inc.starts_with('/') {
            return Err(at(format!("include {inc:?} is not a relative .toml path")));
        }
    }
    for (name, rule) in &cfg.packages {
        match rule {
            PackageRule::Rule(r) if !PACKAGE_RULES.contains(&r.as_str()) => {
                return Err(at(format!("package {name}: unknown rule {r:?}")));
            }
            PackageRule::Rule(r) if r == "local" && !recipes.contains_key(name) => {
                return Err(at(format!(
                    "package {name} is built locally but image/redox has no recipe for it"
                )));
            }
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    for f in &cfg.files {
        if !f.path.starts_with('/') {
            return Err(at(format!("file path {:?} is not absolute", f.path)));
        }
        if !seen.insert(f.path.as_str()) && !f.append {
            return Err(at(format!("{} is written twice", f.path)));
        }
        if f.symlink && f.directory {
            return Err(at(format!("{} is both a symlink and a directory", f.path)));
        }
        if f.mode.is_some_and(|m| m > 0o7777) {
            return Err(at(format!(
                "{}: mode {:o} is not a permission mode",
                f.path,
                f.mode.unwrap()
            )));
        }
    }
    Ok(cfg)
}

// ---------------------------------------------------------------------------
// The initfs tree (`image/redox/initfs/`)

/// Where the initfs's match entries sit, relative to `image/redox`.
const INITFS_PCID_DIR: &str = "initfs/etc/pcid.d";
/// The initfs's programs, as init and pcid-spawner see them.
const INITFS_BIN: &str = "/scheme/initfs/bin/";
/// The base programs the image tool puts into the initfs's `/bin`.
const BASE_PROGRAMS: [&str; 8] = [
    "init",
    "logd",
    "ramfs",
    "randd",
    "zerod",
    "nulld",
    "pcid",
    "pcid-spawner",
];
/// Ours, in the initfs's `/bin`.
const OUR_PROGRAMS: [&str; 3] = ["pddgpud", "pddgpu", "pddgpu-redox-guest"];

/// An initfs match entry must start one of our workspace binaries from the
/// initfs (a bare name would resolve to /usr/lib/drivers, which the initfs
/// image does not have).
fn check_initfs_commands(path: &Path, cfg: &PcidConfig) -> Result<(), String> {
    let ws = workspace_bins();
    for d in &cfg.drivers {
        let prog = &d.command[0];
        let name = prog.strip_prefix(INITFS_BIN).ok_or_else(|| {
            format!(
                "{}: `{prog}` is not a program in {INITFS_BIN}",
                path.display()
            )
        })?;
        if !OUR_PROGRAMS.contains(&name) || !ws.values().any(|bins| bins.contains(name)) {
            return Err(format!(
                "{}: `{prog}` is not one of our workspace binaries",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The commands of an init.rc as base's init reads them: one per line,
/// words split on single spaces, `#` lines and blank lines skipped.
fn init_commands(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(' ').collect())
        .collect()
}

/// What the scenario image's init.rc must do, in order; `Err` says what is
/// wrong.
fn check_init_rc(text: &str) -> Result<(), String> {
    const BUILTINS: [&str; 10] = [
        "cd", "echo", "export", "run", "run.d", "stdio", "unset", "nowait", "notify", "",
    ];
    let cmds = init_commands(text);
    let pos = |pred: &dyn Fn(&[&str]) -> bool| cmds.iter().position(|c| pred(c));
    if pos(&|c| c == ["export", "PATH", "/scheme/initfs/bin"]).is_none() {
        return Err("PATH is not /scheme/initfs/bin".into());
    }
    let mut last = 0;
    for daemon in ["nulld", "zerod", "randd", "logd", "ramfs", "pcid"] {
        let at = pos(&|c| c.len() >= 2 && c[0] == "notify" && c[1] == daemon).ok_or(format!(
            "`notify {daemon}` missing (started without waiting for it)"
        ))?;
        if at < last {
            return Err(format!("`notify {daemon}` comes too early"));
        }
        last = at;
    }
    let spawner = pos(&|c| c[0] == "pcid-spawner")
        .ok_or("pcid-spawner is not run (pddgpud would never start)")?;
    if spawner < last {
        return Err("pcid-spawner runs before pcid is ready".into());
    }
    let want = format!("/scheme/{INITFS_PCID_DIR}");
    if cmds[spawner].get(1).copied() != Some(want.as_str()) {
        return Err(format!(
            "pcid-spawner is not given our match entries ({want}): {:?}",
            cmds[spawner]
        ));
    }
    let scenario = pos(&|c| c == ["pddgpu-redox-guest"])
        .ok_or("the scenario (`pddgpu-redox-guest`, waited for) is not run")?;
    if scenario < spawner {
        return Err("the scenario runs before pcid-spawner has started pddgpud".into());
    }
    for c in &cmds {
        let prog = c[0];
        let known = BUILTINS.contains(&prog)
            || BASE_PROGRAMS.contains(&prog)
            || OUR_PROGRAMS.contains(&prog);
        if !known {
            return Err(format!(
                "`{prog}` is neither an init builtin nor in the initfs"
            ));
        }
        if prog == "notify" || prog == "nowait" {
            match c.get(1) {
                Some(p) if BASE_PROGRAMS.contains(p) || OUR_PROGRAMS.contains(p) => {}
                other => return Err(format!("`{prog}` of {other:?}: not in the initfs")),
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The tests

/// Everything under image/redox, classified and checked.
struct Packaging {
    recipes: BTreeMap<String, RecipeFacts>,
    /// pcid.d files of the repository, by file name.
    pcid: BTreeMap<String, (String, PcidConfig)>,
    /// pcid.d files of the initfs tree, by file name.
    initfs_pcid: BTreeMap<String, PcidConfig>,
    configs: Vec<(PathBuf, FsConfig)>,
}

fn load() -> Result<Packaging, String> {
    let dir = redox_dir();
    let files = toml_files(&dir);
    let mut recipes = BTreeMap::new();
    let mut pcid = BTreeMap::new();
    let mut initfs_pcid = BTreeMap::new();
    let mut config_paths = Vec::new();
    for p in &files {
        let rel = p.strip_prefix(&dir).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let text = read(p);
        match first.as_ref() {
            "recipes" if p.file_name().is_some_and(|n| n == "recipe.toml") => {
                let facts = check_recipe(p, &text)?;
                recipes.insert(facts.name.clone(), facts);
            }
            "pcid.d" => {
                let cfg = check_pcid_text(p, &text)?;
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                pcid.insert(name, (text, cfg));
            }
            "config" => config_paths.push(p.clone()),
            "initfs" if rel.parent() == Some(Path::new(INITFS_PCID_DIR)) => {
                let cfg = check_pcid_text(p, &text)?;
                check_initfs_commands(p, &cfg)?;
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                initfs_pcid.insert(name, cfg);
            }
            _ => {
                return Err(format!(
                    "{}: a TOML file this test does not know; say what it is in redox_packaging.rs",
                    p.display()
                ))
            }
        }
    }
    let mut configs = Vec::new();
    for p in config_paths {
        let cfg = check_fs_config(&p, &read(&p), &recipes)?;
        configs.push((p, cfg));
    }
    Ok(Packaging {
        recipes,
        pcid,
        initfs_pcid,
        configs,
    })
}

#[test]
fn every_toml_under_image_redox_is_known_and_valid() {
    let pk = load().unwrap_or_else(|e| panic!("{e}"));
    assert!(pk.recipes.contains_key("pddgpud"), "no pddgpud recipe");
    assert!(!pk.pcid.is_empty(), "no pcid.d match entry");
    assert!(!pk.configs.is_empty(), "no filesystem config");
}

#[test]
fn the_recipe_installs_the_driver_the_match_entries_start() {
    let pk = load().unwrap_or_else(|e| panic!("{e}"));
    let staged = &pk.recipes["pddgpud"].staged;
    for (name, (_, cfg)) in &pk.pcid {
        for d in &cfg.drivers {
            let prog = program_path(d);
            assert!(
                staged.contains(&prog),
                "{name}: starts {prog}, which the pddgpud recipe does not install ({staged:?})"
            );
        }
    }
    // The PDDGPU's own entry ships in the package; the stand-in comes with
    // the image config only.
    assert!(
        staged.contains("/usr/lib/pcid.d/pddgpud.toml"),
        "{staged:?}"
    );
    assert!(staged.contains("/usr/bin/pddgpu"), "{staged:?}");
}

#[test]
fn image_config_adds_the_package_and_the_same_stand_in_entry() {
    let pk = load().unwrap_or_else(|e| panic!("{e}"));
    for (path, cfg) in &pk.configs {
        assert!(
            cfg.packages.contains_key("pddgpud"),
            "{}: does not add pddgpud",
            path.display()
        );
        let mut pcid_files = 0;
        for f in &cfg.files {
            let Some(name) = f
                .path
                .strip_prefix("/etc/pcid.d/")
                .or(f.path.strip_prefix("/usr/lib/pcid.d/"))
            else {
                continue;
            };
            pcid_files += 1;
            check_pcid_text(Path::new(&f.path), &f.data).unwrap_or_else(|e| panic!("{e}"));
            let (repo_text, _) = pk.pcid.get(name).unwrap_or_else(|| {
                panic!(
                    "{}: installs {name}, which image/redox/pcid.d lacks",
                    path.display()
                )
            });
            assert_eq!(
                &f.data,
                repo_text,
                "{}: {} differs from image/redox/pcid.d/{name}",
                path.display(),
                f.path
            );
        }
        assert!(
            pcid_files > 0,
            "{}: installs no pcid match entry",
            path.display()
        );
    }
}

#[test]
fn pcid_spawner_gives_bochs_display_to_pddgpud_and_std_vga_to_bgad() {
    let pk = load().unwrap_or_else(|e| panic!("{e}"));
    // The match entry the stock image ships for bgad (graphics/bgad/config.toml).
    let bgad = "[[drivers]]\nname = \"QEMU Graphics Array\"\nclass = 0x03\nvendor = 0x1234\ndevice = 0x1111\ncommand = [\"bgad\"]\n";
    let (path, cfg) = &pk.configs[0];
    let mut dir: BTreeMap<String, String> = BTreeMap::new();
    dir.insert("bgad.toml".into(), bgad.into());
    dir.insert("e1000d.toml".into(), "[[drivers]]\nname = \"E1000 NIC\"\nclass = 0x02\nids = { 0x8086 = [0x100e, 0x100f] }\ncommand = [\"e1000d\"]\n".into());
    // What the package installs, then what the image config adds.
    for (name, (text, _)) in &pk.pcid {
        if pk.recipes["pddgpud"]
            .staged
            .contains(&format!("/usr/lib/pcid.d/{name}"))
        {
            dir.insert(name.clone(), text.clone());
        }
    }
    for f in &cfg.files {
        if let Some(name) = f.path.strip_prefix("/etc/pcid.d/") {
            dir.insert(name.to_string(), f.data.clone());
        }
    }
    let who = |f: &Func| spawner_choice(&dir, f).map(|d| d.command[0].clone());
    assert_eq!(
        who(&BOCHS_DISPLAY).as_deref(),
        Some("pddgpud"),
        "{}",
        path.display()
    );
    assert_eq!(who(&STD_VGA).as_deref(), Some("bgad"));
    assert_eq!(who(&E1000).as_deref(), Some("e1000d"));
    let pddgpu = Func {
        vendor: 0x1234,
        device: 0x5044,
        class: 3,
        subclass: 0x80,
        interface: 0,
    };
    assert_eq!(who(&pddgpu).as_deref(), Some("pddgpud"));
    let other = Func {
        vendor: 0x1af4,
        device: 0x1050,
        class: 3,
        subclass: 0x80,
        interface: 0,
    };
    assert_eq!(who(&other), None);
}

// The checks themselves must catch what they are for: feed them broken input.

#[test]
fn misspelt_or_missing_keys_are_caught() {
    let p = Path::new("test.toml");
    let ok = "[[drivers]]\nname = \"x\"\nclass = 3\nvendor = 0x1234\ndevice = 0x1111\ncommand = [\"pddgpud\"]\n";
    assert!(check_pcid_text(p, ok).is_ok());
    for bad in [
        ok.replace("class = 3", "clas = 3"),    // unknown key
        ok.replace("class = 3", "class = 300"), // not a u8
        ok.replace("vendor = 0x1234\n", ""),    // matches any vendor
        ok.replace("[\"pddgpud\"]", "[]"),      // nothing to run
        ok.replace("name = \"x\"\n", ""),       // unnamed
        ok.replace("vendor = 0x1234\ndevice = 0x1111", "ids = { 0xzz = [1] }"), // bad ids key
        ok.replace("[[drivers]]", "[drivers]"), // not an array
        ok.replace("command", "commands"),      // misspelt
        "# nothing\n".to_string(),
    ] {
        assert!(check_pcid_text(p, &bad).is_err(), "accepted:\n{bad}");
    }

    let recipes = BTreeMap::new();
    assert!(check_fs_config(p, "[packages]\nx = {}\n", &recipes).is_ok());
    for bad in [
        "[general]\nfilesystem_sise = 256\n",
        "[packages]\nx = \"sauce\"\n",
        "[packages]\nx = \"local\"\n", // no recipe for it
        "[[files]]\npath = \"etc/x\"\ndata = \"\"\n",
        "[[files]]\npath = \"/etc/x\"\n", // no data
        "[[files]]\npath = \"/etc/x\"\ndata = \"\"\nmod = 0o644\n",
        "[[files]]\npath = \"/etc/x\"\ndata = \"\"\nmode = 0o17777\n",
        "[[file]]\npath = \"/etc/x\"\ndata = \"\"\n",
        "include = [\"/abs.toml\"]\n",
    ] {
        assert!(
            check_fs_config(p, bad, &recipes).is_err(),
            "accepted:\n{bad}"
        );
    }

    let rp = redox_dir().join("recipes/pddgpud/recipe.toml");
    let good = read(&rp);
    assert!(check_recipe(&rp, &good).is_ok());
    for (from, to) in [
        ("template = \"custom\"", "template = \"cusotm\""),
        ("template = \"custom\"", "template = \"cargo\""), // script ignored
        ("[build]", "[biuld]"),
        ("--bin pddgpud", "--bin pddgpudd"),
        ("-p pddgpu-ipc", "-p pddgpu-icp"),
        (
            "image/redox/pcid.d/pddgpud.toml",
            "image/redox/pcid/pddgpud.toml",
        ),
    ] {
        assert!(good.contains(from), "recipe no longer contains {from:?}");
        let bad = good.replace(from, to);
        assert!(check_recipe(&rp, &bad).is_err(), "accepted {to:?}");
    }
}

#[test]
fn matching_follows_pcid_spawner_rules() {
    let e = |s: &str| -> DriverEntry {
        let c: PcidConfig = toml::from_str(s).unwrap();
        c.drivers[0].clone()
    };
    let by_ids = e("[[drivers]]\nname=\"n\"\nids = { \"0x1234\" = [0x1111], \"8086\" = [0x100e] }\ncommand=[\"d\"]\n");
    assert!(by_ids.matches(&BOCHS_DISPLAY) && by_ids.matches(&E1000));
    let range = e("[[drivers]]\nname=\"n\"\nvendor=0x1234\ndevice_id_range={ start = 0x1000, end = 0x1111 }\ncommand=[\"d\"]\n");
    assert!(!range.matches(&BOCHS_DISPLAY), "end is exclusive");
    let sub = e(
        "[[drivers]]\nname=\"n\"\nclass=3\nsubclass=0x80\nvendor=0x1234\ncommand=[\"/bin/x\"]\n",
    );
    assert!(sub.matches(&BOCHS_DISPLAY) && !sub.matches(&STD_VGA));
    assert_eq!(program_path(&sub), "/bin/x");
}

#[test]
fn initfs_init_rc_starts_the_daemons_pcid_spawner_and_the_scenario() {
    let path = redox_dir().join("initfs/etc/init.rc");
    check_init_rc(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn initfs_entries_start_pddgpud_on_the_devices_the_package_entries_name() {
    let pk = load().unwrap_or_else(|e| panic!("{e}"));
    assert!(!pk.initfs_pcid.is_empty(), "no initfs match entries");
    let drivers: Vec<&DriverEntry> = pk.initfs_pcid.values().flat_map(|c| &c.drivers).collect();
    let who = |f: &Func| {
        drivers
            .iter()
            .find(|d| d.matches(f))
            .map(|d| d.command.clone())
    };
    let pddgpu = Func {
        vendor: 0x1234,
        device: 0x5044,
        class: 3,
        subclass: 0x80,
        interface: 0,
    };
    for f in [BOCHS_DISPLAY, pddgpu] {
        assert_eq!(
            who(&f),
            Some(vec![
                format!("{INITFS_BIN}pddgpud"),
                "--backend".to_string(),
                "pcid".to_string()
            ]),
            "{f:?}"
        );
    }
    assert_eq!(who(&STD_VGA), None);
    assert_eq!(who(&E1000), None);
    // The same devices as the package's entries: every repository entry has
    // an initfs twin with the same match fields and arguments.
    let key = |d: &DriverEntry| {
        (
            d.class,
            d.subclass,
            d.interface,
            d.vendor,
            d.device,
            d.ids.clone(),
            d.command[1..].to_vec(),
        )
    };
    for (name, (_, cfg)) in &pk.pcid {
        for d in &cfg.drivers {
            assert!(
                drivers.iter().any(|i| key(i) == key(d)),
                "image/redox/pcid.d/{name}: {:?} has no twin in {INITFS_PCID_DIR}",
                d.name
            );
        }
    }
}

#[test]
fn init_rc_checks_catch_a_broken_boot_order() {
    let good = read(&redox_dir().join("initfs/etc/init.rc"));
    assert!(check_init_rc(&good).is_ok());
    for (from, to) in [
        ("notify pcid\n", "pcid\n"), // not waited for
        ("notify zerod\n", ""),
        ("export PATH /scheme/initfs/bin", "export PATH /usr/bin"),
        (
            "pcid-spawner /scheme/initfs/etc/pcid.d",
            "pcid-spawner /etc/pcid.d",
        ),
        ("pddgpu-redox-guest\n", "nowait pddgpu-redox-guest\n"),
        ("notify logd\n", "notify logd\nnotify bgad\n"),
    ] {
        assert!(good.contains(from), "init.rc no longer contains {from:?}");
        let bad = good.replacen(from, to, 1);
        assert!(check_init_rc(&bad).is_err(), "accepted {to:?}");
    }
    // The scenario before the driver.
    let lines: Vec<&str> = good.lines().collect();
    let spawner = lines
        .iter()
        .position(|l| l.starts_with("pcid-spawner"))
        .unwrap();
    let mut moved: Vec<&str> = lines.clone();
    let scenario = moved
        .iter()
        .position(|l| *l == "pddgpu-redox-guest")
        .unwrap();
    let s = moved.remove(scenario);
    moved.insert(spawner, s);
    assert!(check_init_rc(&moved.join("\n")).is_err());

    let p = Path::new("initfs.toml");
    let cfg = check_pcid_text(
        p,
        "[[drivers]]\nname = \"x\"\nvendor = 0x1234\ncommand = [\"pddgpud\"]\n",
    )
    .unwrap();
    assert!(check_initfs_commands(p, &cfg).is_err(), "relative command");
    let cfg = check_pcid_text(
        p,
        "[[drivers]]\nname = \"x\"\nvendor = 0x1234\ncommand = [\"/scheme/initfs/bin/bgad\"]\n",
    )
    .unwrap();
    assert!(check_initfs_commands(p, &cfg).is_err(), "not ours");
}
