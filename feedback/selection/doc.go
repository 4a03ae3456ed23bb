// Package selection owns the choice of which classified cells become
// feedback samples and why (uncertain scores, cells of drifted windows, a
// stratified random slice), under per-window and daily byte caps. It is
// separate from package feedback because it imports no cgo package, so the
// fleet side can use it (to replay or simulate what devices would send) and
// its tests run with CGO_ENABLED=0; the reasons it returns are the wire
// package's Reason constants.
package selection
