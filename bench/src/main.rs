fn main() {
    eprintln!("ringkv-bench: no subcommands yet");
    std::process::exit(2);
}
