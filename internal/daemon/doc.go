// Package daemon is `scopewatch serve`: the long-running process on the
// microscope's computer. It owns the intake (the inbox folder, HTTP uploads,
// the camera), the analysis queue and its workers, the slides and their
// summaries in SQLite, the operations endpoints (health, readiness,
// metrics, drift status and acknowledgement), the MQTT link with its
// status, results and alerts, the drift monitor, the feedback link, and
// housekeeping (idle slides, storage caps, the systemd watchdog).
//
// Its seam is small: New builds a daemon from a validated configuration,
// Run runs it until the context ends and shuts it down within the
// configured bound, and Reload applies a new configuration's reloadable
// fields. Signals belong to the caller (cmd/scopewatch), as do flags and
// the logger.
//
// Files are named by what they own: daemon.go (the Daemon, its queue and
// lifecycle), model.go and swap.go (the analyzer and its hot swap), store.go
// (the serve_* tables), slides.go (slide summaries), inbox.go, camera.go,
// http.go, mqtt.go, drift.go, feedback.go, fields.go, housekeeping.go,
// metrics.go and memory*.go (returning start-up pages to the kernel).
package daemon
