package testutil

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
)

// NoisePNG is a w x h PNG of seeded noise. Noise does not compress, so the
// size is predictable (about 4*w*h bytes): tests of size limits and chunking
// use it.
func NoisePNG(w, h int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = uint8(r.UintN(256))
	}
	img.Set(0, 0, color.NRGBA{A: 255})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		panic(err) // encoding into memory cannot fail
	}
	return buf.Bytes()
}
