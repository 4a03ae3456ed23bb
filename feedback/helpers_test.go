package feedback

import (
	"database/sql"
	"encoding/hex"
	"github.com/scopewatch/scopewatch/internal/testutil"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback/wire"
)

type storeDB struct {
	*sql.DB
	path string
}

// testPNG makes a w x h PNG of seeded noise (testutil.NoisePNG).
func testPNG(t testing.TB, w, h int, seed uint64) []byte {
	t.Helper()
	return testutil.NoisePNG(w, h, seed)
}

func testSample(i int) wire.Sample {
	slide := wire.SlideHash("slide-"+string(rune('a'+i%26)), []byte("device-secret"))
	return wire.Sample{
		Device: "dev-1", Site: "lab", SlideHash: slide, PParasitized: 0.48, LabelPredicted: wire.LabelUninfected,
		ModelVersion: "2026.11.0", Time: time.Date(2026, 11, 28, 10, 0, i, 0, time.UTC), Reason: wire.ReasonUncertainty,
	}
}

// isHex64 reports whether s is a lowercase hex sha256.
func isHex64(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32 && hex.EncodeToString(b) == s
}
