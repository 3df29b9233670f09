use std::process::ExitCode;

fn main() -> ExitCode {
    tracer::main()
}
