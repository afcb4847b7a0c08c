//! `kobako image ...`

use anyhow::Result;
use clap::Subcommand;
use kobako_image::{kernel, tiny, StderrProgress};

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
}

pub fn run(cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Kernel { jobs } => {
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            let a = kernel::build(&StderrProgress, jobs)?;
            println!("vmlinux  {}", a.vmlinux.display());
            println!("bzImage  {}", a.bzimage.display());
        }
        ImageCmd::Tiny => {
            let agent = tiny::find_agent()?;
            let img = tiny::build(&agent, &StderrProgress)?;
            println!("initramfs  {}", img.initramfs.display());
            println!("ext4       {}", img.ext4.display());
        }
    }
    Ok(())
}
