fn main() {
    eprintln!("ringkv-util: no subcommands yet");
    std::process::exit(2);
}
