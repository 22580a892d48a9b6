"""Files shipped with wgcast: the systemd unit and the catchment web page."""
