//! `kobako image ...`: the guest kernel, the tiny image, and the image store (ls, inspect, rm,
//! du, build debian, import).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use kobako_image::store::Store;
use kobako_image::{debian, import, kernel, recipes, tiny, StderrProgress};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build the guest kernel from Debian's linux-source (cached; built once per machine).
    Kernel {
        /// Parallel make jobs (default: number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Build the tiny image (busybox + kobako-agent) as initramfs and ext4 (cached).
    Tiny,
    /// List stored images (`-o wide` adds source, checksum and package count).
    Ls {
        #[command(flatten)]
        out: crate::output::OutputArgs,
    },
    /// Show an image's manifest.
    Inspect {
        name: String,
        #[command(flatten)]
        out: crate::output::OutputArgs,
    },
    /// Remove an image (refused while a VM uses it).
    Rm { name: String },
    /// Disk usage of the image store and the VM overlays.
    Du {
        #[arg(long)]
        json: bool,
    },
    /// Build an image: `debian` with options, or a named recipe (built when missing or
    /// outdated; `kobako up` does this by itself).
    #[command(subcommand, after_help = recipes_help())]
    Build(BuildCmd),
    /// Import a rootfs tarball (tar, tar.gz, tar.xz, tar.zst) or an OCI image layout directory.
    Import {
        /// The tarball or OCI layout directory.
        source: PathBuf,
        #[arg(long)]
        name: String,
        /// Filesystem size, e.g. 2G (default: content + 1 GiB).
        #[arg(long)]
        size: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum BuildCmd {
    /// Debian (mmdebstrap minbase + systemd + kobako-agent [+ packages]) as a qcow2 base.
    Debian {
        /// Image name (default: debian).
        #[arg(long, default_value = "debian")]
        name: String,
        /// Extra packages, comma-separated (e.g. nginx,redis-server,cloud-init).
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// Presets: docker.
        #[arg(long = "with", value_delimiter = ',')]
        with: Vec<String>,
        /// Debian suite.
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// More apt sources, one sources.list line each (repeatable), e.g.
        /// "deb http://deb.debian.org/debian bookworm-backports main"; take a package from it
        /// with PKG/SUITE in --packages (suricata/bookworm-backports).
        #[arg(long = "source", value_name = "LINE")]
        sources: Vec<String>,
        /// Filesystem size, e.g. 8G (default: content + 2 GiB, at least 4 GiB).
        #[arg(long)]
        size: Option<String>,
    },
    /// A named recipe (see below).
    #[command(external_subcommand)]
    Recipe(Vec<String>),
}

fn recipes_help() -> String {
    let mut s = String::from("Recipes (kobako image build NAME):\n");
    for r in recipes::RECIPES {
        s.push_str(&format!("  {:<14} {}\n", r.name, r.description));
    }
    s
}

/// `kobako image build NAME`: build the recipe's image unless it is current.
fn build_recipe(args: &[String]) -> Result<()> {
    let (name, rest) = args.split_first().expect("clap gives the subcommand name");
    let Some(r) = recipes::find(name) else {
        anyhow::bail!(
            "no image recipe named '{name}' (recipes: debian, {}); for your own packages use `kobako image build debian --name {name} --packages ...`",
            recipes::names()
        );
    };
    if let Some(extra) = rest.first() {
        anyhow::bail!(
            "kobako image build {name}: unexpected '{extra}' (a recipe takes no options; for other packages use `kobako image build debian --name NAME --packages ...`)"
        );
    }
    let agent = tiny::find_agent()?;
    let s = store();
    let before = s.get(name).ok().map(|i| i.manifest.created);
    let img = recipes::ensure(&s, r, &agent, &users, &StderrProgress)?;
    if before.as_ref() == Some(&img.manifest.created) {
        eprintln!(
            "image '{name}' is up to date (built {})",
            img.manifest.created
        );
    }
    println!("{}", img.manifest.name);
    Ok(())
}

fn parse_size(s: &Option<String>) -> Result<Option<u64>> {
    match s {
        None => Ok(None),
        Some(s) => {
            let mib =
                kobako_runtime::config::parse_mib(s).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
            if mib < 64 {
                anyhow::bail!("--size {s}: at least 64M");
            }
            Ok(Some(u64::from(mib) << 20))
        }
    }
}

pub use kobako_boot::image::{agent_is_current, store, users};

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / 1048576.0)
}

pub fn run(cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Kernel { jobs } => build_kernel(jobs),
        ImageCmd::Tiny => build_tiny(),
        ImageCmd::Ls { out } => ls(&out),
        ImageCmd::Inspect { name, out } => inspect(&name, &out),
        ImageCmd::Rm { name } => rm(&name),
        ImageCmd::Du { json } => du(json),
        ImageCmd::Build(BuildCmd::Debian {
            name,
            packages,
            with,
            suite,
            sources,
            size,
        }) => build_debian(&name, packages, with, suite, sources, &size),
        ImageCmd::Build(BuildCmd::Recipe(args)) => build_recipe(&args),
        ImageCmd::Import { source, name, size } => import_image(source, name, &size),
    }
}

/// `image kernel`: build the guest kernel with `jobs` make jobs (default: the CPUs).
fn build_kernel(jobs: Option<usize>) -> Result<()> {
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let a = kernel::build(&StderrProgress, jobs)?;
    println!("vmlinux  {}", a.vmlinux.display());
    println!("bzImage  {}", a.bzimage.display());
    Ok(())
}

/// `image tiny`: build the tiny image and register it in the store.
fn build_tiny() -> Result<()> {
    let agent = tiny::find_agent()?;
    let img = tiny::build(&agent, &StderrProgress)?;
    Store::default().register_tiny(&img)?;
    println!("initramfs  {}", img.initramfs.display());
    println!("ext4       {}", img.ext4.display());
    Ok(())
}

/// `image ls`: the stored images as a table (wider with `-o wide`) or JSON manifests.
fn ls(out: &crate::output::OutputArgs) -> Result<()> {
    let imgs = store().list()?;
    let wide = out.is_wide();
    if out.is_json() {
        let v: Vec<_> = imgs.iter().map(|i| &i.manifest).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!(
        "{:<24} {:<9} {:<6} {:>9} {:>9} {:<20} {:<10}",
        "NAME", "KIND", "FORMAT", "SIZE", "VSIZE", "CREATED", "CLOUD-INIT"
    );
    if wide {
        print!(" {:<12} {:>8}  SOURCE", "SHA256", "PACKAGES");
    }
    println!();
    for i in imgs {
        let m = &i.manifest;
        print!(
            "{:<24} {:<9} {:<6} {:>9} {:>9} {:<20} {:<10}",
            m.name,
            m.kind.to_string(),
            m.format,
            mib(m.size),
            mib(m.virtual_size),
            m.created,
            if m.cloud_init { "yes" } else { "no" }
        );
        if wide {
            print!(
                " {:<12} {:>8}  {}",
                m.sha256.get(..12).unwrap_or(&m.sha256),
                m.packages.len(),
                m.source
            );
        }
        println!();
    }
    Ok(())
}

/// `image inspect NAME`: the manifest, where the base is, who uses it and whether its agent
/// is current.
fn inspect(name: &str, out: &crate::output::OutputArgs) -> Result<()> {
    let json = out.is_json();
    let img = store().get(name)?;
    let used = users(&img);
    let agent_current = agent_is_current(&img);
    if json {
        let mut v = serde_json::to_value(&img.manifest)?;
        v["path"] = img.base_path().display().to_string().into();
        v["used_by"] = serde_json::to_value(&used)?;
        v["agent_current"] = serde_json::to_value(agent_current)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let m = &img.manifest;
    println!("name        {}", m.name);
    println!("kind        {}", m.kind);
    println!("base        {} ({})", img.base_path().display(), m.format);
    println!(
        "size        {} on disk, {} filesystem",
        mib(m.size),
        mib(m.virtual_size)
    );
    println!("created     {}", m.created);
    println!("source      {}", m.source);
    println!("sha256      {}", m.sha256);
    println!("packages    {}", m.packages.join(","));
    println!("cloud-init  {}", if m.cloud_init { "yes" } else { "no" });
    if let Some(s) = m.build_secs {
        println!("build time  {s:.1} s");
    }
    if let Some(i) = &m.init {
        println!("init        {i}");
    }
    match agent_current {
        Some(true) => println!("agent       current"),
        Some(false) => println!(
            "agent       OUTDATED (built with another kobako-agent or recipe; rebuild or re-import it)"
        ),
        None => {}
    }
    println!(
        "used by     {}",
        if used.is_empty() {
            "-".into()
        } else {
            used.join(", ")
        }
    );
    Ok(())
}

/// `image rm NAME`: refused by the store while a VM uses the image.
fn rm(name: &str) -> Result<()> {
    let s = store();
    let img = s.get(name)?;
    s.remove(name, &users(&img))?;
    eprintln!("image '{name}' removed");
    Ok(())
}

/// `image du`: bytes on disk of each image and VM overlay, and the total.
fn du(json: bool) -> Result<()> {
    let u = store().usage()?;
    if json {
        let list = |v: &[(String, u64)]| {
            v.iter()
                .map(|(n, b)| serde_json::json!({"name": n, "bytes": b}))
                .collect::<Vec<_>>()
        };
        let total: u64 = u.images.iter().chain(&u.overlays).map(|(_, b)| b).sum();
        let v = serde_json::json!({
            "images": list(&u.images),
            "overlays": list(&u.overlays),
            "total_bytes": total,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut total = 0;
    println!("{:<32} {:>10}", "IMAGE", "ON DISK");
    for (n, b) in &u.images {
        total += b;
        println!("{n:<32} {:>10}", mib(*b));
    }
    println!("{:<32} {:>10}", "VM OVERLAY", "ON DISK");
    for (n, b) in &u.overlays {
        total += b;
        println!("{n:<32} {:>10}", mib(*b));
    }
    println!("{:<32} {:>10}", "total", mib(total));
    Ok(())
}

/// `image build debian ...`: prints the built image's name.
fn build_debian(
    name: &str,
    packages: Vec<String>,
    with: Vec<String>,
    suite: String,
    sources: Vec<String>,
    size: &Option<String>,
) -> Result<()> {
    let agent = tiny::find_agent()?;
    let mut o = debian::DebianOptions::new(name);
    o.packages = packages;
    o.with = with;
    o.suite = suite;
    o.sources = sources;
    o.size_bytes = parse_size(size)?;
    let img = debian::build(&store(), &o, &agent, &StderrProgress)?;
    println!("{}", img.manifest.name);
    Ok(())
}

/// `image import SOURCE --name NAME`: prints the imported image's name.
fn import_image(source: PathBuf, name: String, size: &Option<String>) -> Result<()> {
    let agent = tiny::find_agent()?;
    let o = import::ImportOptions {
        name,
        source,
        size_bytes: parse_size(size)?,
    };
    let img = import::import(&store(), &o, &agent, &StderrProgress)?;
    println!("{}", img.manifest.name);
    Ok(())
}
