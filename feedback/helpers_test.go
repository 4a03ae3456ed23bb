package feedback

import (
	"bytes"
	"database/sql"
	"encoding/hex"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback/wire"
)

type storeDB struct {
	*sql.DB
	path string
}

// testPNG makes a w x h PNG of seeded noise (noise does not compress, so
// the size is predictable: about 4*w*h bytes).
func testPNG(t testing.TB, w, h int, seed uint64) []byte {
	t.Helper()
	return noisePNG(w, h, seed)
}

func noisePNG(w, h int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = uint8(r.UintN(256))
	}
	img.Set(0, 0, color.NRGBA{A: 255})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		panic(err)
	}
	return buf.Bytes()
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
