//! `ringseed info`: what a .torrent holds.

use crate::cli::{Exit, InfoArgs};
use crate::display::{torrent_json, torrent_text};

pub fn run(args: InfoArgs) -> anyhow::Result<Exit> {
    let metainfo = crate::setup::load_torrent(&args.torrent)?;
    if args.json {
        println!("{}", torrent_json(&metainfo));
    } else {
        print!("{}", torrent_text(&metainfo));
    }
    Ok(Exit::Success)
}
