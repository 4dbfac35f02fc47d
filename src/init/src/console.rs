//! Console input for the wizard and the menu: one reader thread per active console feeds one
//! line queue, so a person at the screen and a script on the serial port are both heard. Owns
//! echo control for secrets. Must never block output when a console has no reader.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver};

use crate::log::console_write;
use crate::sys;
use crate::wizard::Term;

/// Longest input line accepted (longer ones are cut).
const MAX_INPUT_BYTES: usize = 4096;

#[derive(Debug)]
pub struct ConsoleTerm {
    rx: Receiver<String>,
    fds: Vec<OwnedFd>,
}

impl ConsoleTerm {
    /// Starts a reader thread for each console.
    pub fn start(consoles: Vec<(String, File)>) -> ConsoleTerm {
        let (tx, rx) = channel();
        let mut fds = Vec::new();
        for (name, f) in consoles {
            if let Ok(fd) = f.try_clone() {
                fds.push(OwnedFd::from(fd));
            }
            let tx = tx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("console-{name}"))
                .spawn(move || {
                    let mut r = BufReader::new(f);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        match r.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => {
                                // A console without input (EOF) stays silent; retry slowly in
                                // case it comes back (a reconnected serial line).
                                std::thread::sleep(std::time::Duration::from_secs(1));
                            }
                            Ok(_) => {
                                line.truncate(MAX_INPUT_BYTES);
                                let s = String::from_utf8_lossy(&line)
                                    .trim_end_matches(['\r', '\n'])
                                    .to_string();
                                if tx.send(s).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
        }
        ConsoleTerm { rx, fds }
    }
}

impl Term for ConsoleTerm {
    fn say(&mut self, text: &str) {
        console_write(&format!("{text}\n"));
    }
    fn ask(&mut self, prompt: &str) -> Option<String> {
        console_write(prompt);
        self.rx.recv().ok()
    }
    fn ask_secret(&mut self, prompt: &str) -> Option<String> {
        for fd in &self.fds {
            let _ = sys::set_echo(fd.as_raw_fd(), false);
        }
        let r = self.ask(prompt);
        for fd in &self.fds {
            let _ = sys::set_echo(fd.as_raw_fd(), true);
        }
        console_write("\n");
        r
    }
}
