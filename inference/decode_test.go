package inference

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"gocv.io/x/gocv"
	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
)

// testImage is a w x h image whose pixel (x, y) has R = 10+x, G = 20+y,
// B = 30+x+y, so decoded channel order and geometry can be checked.
func testImage(w, h int) *image.NRGBA {
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			m.SetNRGBA(x, y, color.NRGBA{uint8(10 + x), uint8(20 + y), uint8(30 + x + y), 255})
		}
	}
	return m
}

func encodePNG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, m, &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeBMP(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := bmp.Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeTIFF(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := tiff.Encode(&b, m, &tiff.Options{Compression: tiff.Deflate}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// pngHeaderOnly is a syntactically valid PNG signature and IHDR claiming
// w x h pixels, with no image data: what a decompression bomb looks like
// to the header check.
func pngHeaderOnly(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2 // 8-bit RGB
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		c := crc32.NewIEEE()
		c.Write([]byte(typ))
		c.Write(data)
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, c.Sum32())
	}
	chunk("IHDR", ihdr)
	chunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})
	chunk("IEND", nil)
	return b.Bytes()
}

func matBGR(t *testing.T, m gocv.Mat) (w, h int, pix []byte) {
	t.Helper()
	if m.Type() != gocv.MatTypeCV8UC3 {
		t.Fatalf("decoded Mat type %d, want 8UC3", int(m.Type()))
	}
	return m.Cols(), m.Rows(), m.ToBytes()
}

func TestDecodeFormats(t *testing.T) {
	src := testImage(7, 5)
	grey := image.NewGray(src.Bounds())
	grey16 := image.NewGray16(src.Bounds())
	rgba64 := image.NewRGBA64(src.Bounds())
	for y := range 5 {
		for x := range 7 {
			grey.SetGray(x, y, color.Gray{uint8(10 * (x + y))})
			grey16.SetGray16(x, y, color.Gray16{uint16(257 * 10 * (x + y))})
			c := src.NRGBAAt(x, y)
			rgba64.SetRGBA64(x, y, color.RGBA64{uint16(c.R) * 257, uint16(c.G) * 257, uint16(c.B) * 257, 0xffff})
		}
	}
	// Semi-transparent RGBA: alpha is dropped, not blended.
	alpha := image.NewNRGBA(src.Bounds())
	copy(alpha.Pix, src.Pix)
	for i := 3; i < len(alpha.Pix); i += 4 {
		alpha.Pix[i] = 100
	}
	rgbAt := func(x, y int) [3]uint8 { c := src.NRGBAAt(x, y); return [3]uint8{c.R, c.G, c.B} }
	greyAt := func(x, y int) [3]uint8 { v := uint8(10 * (x + y)); return [3]uint8{v, v, v} }
	cases := []struct {
		name  string
		data  []byte
		want  func(x, y int) [3]uint8
		exact bool
	}{
		{"png rgb", encodePNG(t, src), rgbAt, true},
		{"png rgba", encodePNG(t, alpha), rgbAt, true},
		{"png grey", encodePNG(t, grey), greyAt, true},
		{"png grey16", encodePNG(t, grey16), greyAt, true},
		{"png rgb16", encodePNG(t, rgba64), rgbAt, true},
		{"tiff rgb", encodeTIFF(t, src), rgbAt, true},
		{"tiff grey16", encodeTIFF(t, grey16), greyAt, true},
		{"tiff rgb16", encodeTIFF(t, rgba64), rgbAt, true},
		{"bmp rgb", encodeBMP(t, src), rgbAt, true},
		{"bmp grey", encodeBMP(t, grey), greyAt, true},
		{"jpeg rgb", encodeJPEG(t, src), rgbAt, false},
		{"jpeg grey", encodeJPEG(t, grey), greyAt, false},
	}
	d := NewDecoder(DecodeOptions{})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := d.Decode(c.data)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			w, h, pix := matBGR(t, m)
			if w != 7 || h != 5 {
				t.Fatalf("size %dx%d, want 7x5", w, h)
			}
			tol := 0
			if !c.exact {
				tol = 12 // JPEG is lossy (and subsamples chroma)
			}
			for y := range h {
				for x := range w {
					want := c.want(x, y)
					i := (y*w + x) * 3
					got := [3]uint8{pix[i+2], pix[i+1], pix[i]} // BGR -> RGB
					for k := range 3 {
						if d := int(got[k]) - int(want[k]); d > tol || d < -tol {
							t.Fatalf("pixel (%d,%d) RGB %v, want %v", x, y, got, want)
						}
					}
				}
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	good := encodePNG(t, testImage(40, 30))
	jpg := encodeJPEG(t, testImage(40, 30))
	bm := encodeBMP(t, testImage(40, 30))
	cases := []struct {
		name string
		data []byte
		want error
		opts DecodeOptions
	}{
		{"zero bytes", nil, ErrEmpty, DecodeOptions{}},
		{"text named png", []byte("this is not an image\n"), ErrNotImage, DecodeOptions{}},
		{"binary junk", []byte{0, 1, 2, 3, 4, 5, 250, 251}, ErrNotImage, DecodeOptions{}},
		{"png signature only", good[:8], ErrTruncated, DecodeOptions{}},
		{"png cut in IHDR", good[:20], ErrTruncated, DecodeOptions{}},
		{"png cut in IDAT", good[:len(good)/2], ErrTruncated, DecodeOptions{}},
		{"png without IEND", good[:len(good)-12], ErrTruncated, DecodeOptions{}},
		{"jpeg cut in header", jpg[:30], ErrTruncated, DecodeOptions{}},
		{"jpeg cut in scan", jpg[:len(jpg)*2/3], ErrTruncated, DecodeOptions{}},
		{"bmp cut in pixels", bm[:len(bm)-100], ErrTruncated, DecodeOptions{}},
		{"png bomb 30000x30000", pngHeaderOnly(30000, 30000), ErrTooLarge, DecodeOptions{}},
		{"png over pixel limit", good, ErrTooLarge, DecodeOptions{MaxPixels: 40*30 - 1}},
		{"over byte limit", good, ErrTooLarge, DecodeOptions{MaxBytes: int64(len(good) - 1)}},
		{"png zero width", pngHeaderOnly(0, 10), ErrDecode, DecodeOptions{}},
		{"png corrupt data", corruptIDAT(good), ErrDecode, DecodeOptions{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := NewDecoder(c.opts).Decode(c.data)
			if err == nil {
				m.Close()
				t.Fatalf("decoded %dx%d, want error %v", m.Cols(), m.Rows(), c.want)
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("error %q, want %v", err, c.want)
			}
			var ie *ImageError
			if !errors.As(err, &ie) || ie.Detail == "" {
				t.Fatalf("error %q carries no detail", err)
			}
		})
	}
}

// corruptIDAT flips bytes inside the compressed pixel data, keeping every
// chunk boundary (and IEND) intact.
func corruptIDAT(p []byte) []byte {
	b := bytes.Clone(p)
	i := bytes.Index(b, []byte("IDAT"))
	for k := i + 6; k < i+40 && k < len(b)-12; k++ {
		b[k] ^= 0x5a
	}
	return b
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	data := encodePNG(t, testImage(9, 9))
	p := filepath.Join(dir, "a.png")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(DecodeOptions{})
	buf := make([]byte, 0, 4) // too small: must grow
	got, err := d.ReadFile(p, buf)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadFile = %d bytes, %v; want %d bytes", len(got), err, len(data))
	}
	// A reused buffer large enough is not reallocated.
	again, err := d.ReadFile(p, got)
	if err != nil || &again[0] != &got[0] {
		t.Fatalf("ReadFile reallocated a large enough buffer (err %v)", err)
	}
	if _, err := NewDecoder(DecodeOptions{MaxBytes: 10}).ReadFile(p, nil); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ReadFile over the byte limit: %v, want ErrTooLarge", err)
	}
	if _, err := d.ReadFile(dir, nil); err == nil {
		t.Fatal("ReadFile of a directory succeeded")
	}
}

// FuzzDecode feeds arbitrary bytes to the decoding entry point: it must
// never crash, and what it accepts must be a non-empty 8-bit BGR image
// within the pixel limit.
func FuzzDecode(f *testing.F) {
	src := testImage(16, 12)
	grey16 := image.NewGray16(src.Bounds())
	seeds := [][]byte{
		encodePNG(f, src), encodeJPEG(f, src), encodeBMP(f, src), encodeTIFF(f, src),
		encodePNG(f, grey16), encodeTIFF(f, grey16),
		pngHeaderOnly(30000, 30000), pngHeaderOnly(3, 3),
		[]byte("not an image"), {},
	}
	for _, s := range seeds[:4] {
		seeds = append(seeds, s[:len(s)/2], corruptIDAT(s))
	}
	for _, s := range seeds {
		f.Add(s)
	}
	const maxPixels = 1 << 20
	d := NewDecoder(DecodeOptions{MaxPixels: maxPixels, MaxBytes: 1 << 20})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := d.Decode(data)
		if err != nil {
			var ie *ImageError
			if !errors.As(err, &ie) {
				t.Fatalf("error %q is not an ImageError", err)
			}
			return
		}
		defer m.Close()
		if m.Empty() || m.Type() != gocv.MatTypeCV8UC3 || m.Cols()*m.Rows() > maxPixels {
			t.Fatalf("accepted image: empty=%v type=%d %dx%d", m.Empty(), int(m.Type()), m.Cols(), m.Rows())
		}
	})
}

func BenchmarkDecodePNG(b *testing.B) {
	benchDecode(b, encodePNG(b, cellLike(136, 128)))
}

func BenchmarkDecodeJPEG(b *testing.B) {
	benchDecode(b, encodeJPEG(b, cellLike(136, 128)))
}

func benchDecode(b *testing.B, data []byte) {
	d := NewDecoder(DecodeOptions{})
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		m, err := d.Decode(data)
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
}

// cellLike is a smooth, crop-sized image (a pale disc on a light
// background) so that codec costs resemble those of real cell crops.
func cellLike(w, h int) *image.NRGBA {
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	cx, cy, r := float64(w)/2, float64(h)/2, float64(min(w, h))*0.4
	for y := range h {
		for x := range w {
			dx, dy := float64(x)-cx, float64(y)-cy
			c := color.NRGBA{235, 225, 230, 255}
			if dx*dx+dy*dy < r*r {
				c = color.NRGBA{200, 120 + uint8((x+y)%16), 140, 255}
			}
			m.SetNRGBA(x, y, c)
		}
	}
	return m
}
