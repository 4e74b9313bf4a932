use clap::Parser;

fn main() {
    let cli = ringkv_bench::Cli::parse();
    if let Err(e) = ringkv_bench::run(cli) {
        eprintln!("ringkv-bench: {e}");
        std::process::exit(1);
    }
}
