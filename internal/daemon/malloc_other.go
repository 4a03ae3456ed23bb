//go:build !linux

package daemon

import "log/slog"

// applyMallocLimits is for glibc; elsewhere the allocator's defaults stay.
func applyMallocLimits(*slog.Logger) {}
