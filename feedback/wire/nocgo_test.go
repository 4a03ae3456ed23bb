package wire

import (
	"testing"

	"github.com/scopewatch/scopewatch/internal/testutil"
)

// TestImportsNoCgo keeps this package usable without cgo: on the fleet side
// and in the pure-Go tests (make test-short).
func TestImportsNoCgo(t *testing.T) { testutil.RequireNoCgo(t) }
