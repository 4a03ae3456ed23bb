package inference

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // DecodeConfig for the bomb guard
	_ "image/png"
	"io"
	"os"
	"unicode/utf8"

	"gocv.io/x/gocv"
	_ "golang.org/x/image/bmp"
)

// Reasons an image is refused. Callers branch on them with errors.Is (for
// example to quarantine a file); the error text says what exactly was wrong.
var (
	ErrEmpty       = errors.New("empty file")
	ErrNotImage    = errors.New("not an image")
	ErrTooLarge    = errors.New("image too large")
	ErrTruncated   = errors.New("truncated image")
	ErrDecode      = errors.New("corrupt image")
	ErrUnsupported = errors.New("unsupported image")
)

// ImageError is a refused image: Kind is one of the sentinel errors above.
type ImageError struct {
	Kind   error
	Detail string
}

func (e *ImageError) Error() string { return e.Kind.Error() + ": " + e.Detail }
func (e *ImageError) Unwrap() error { return e.Kind }

func imgErr(kind error, format string, args ...any) error {
	return &ImageError{Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

// Default decoding limits: far above a microscope field (1920x1080 = 2 MP)
// or a cell crop, far below what would exhaust a 1 GB device.
const (
	DefaultMaxPixels = 40_000_000
	DefaultMaxBytes  = 64 << 20
)

// DecodeOptions bound what the decoder accepts. Zero fields take defaults.
type DecodeOptions struct {
	// MaxPixels refuses images whose header claims more pixels, before
	// any pixel is decoded (decompression-bomb guard).
	MaxPixels int64
	// MaxBytes refuses files larger than this before reading them.
	MaxBytes int64
}

func (o DecodeOptions) withDefaults() DecodeOptions {
	if o.MaxPixels <= 0 {
		o.MaxPixels = DefaultMaxPixels
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	return o
}

// Decoder turns PNG, JPEG, TIFF and BMP bytes (grey, RGB or RGBA, 8 or 16
// bits per channel) into an 8-bit, 3-channel BGR gocv.Mat. It is safe for
// concurrent use.
type Decoder struct {
	opts DecodeOptions
}

// NewDecoder returns a decoder with the given limits.
func NewDecoder(opts DecodeOptions) *Decoder {
	return &Decoder{opts: opts.withDefaults()}
}

// Options returns the decoder's effective limits.
func (d *Decoder) Options() DecodeOptions { return d.opts }

type imageFormat string

const (
	formatPNG  imageFormat = "PNG"
	formatJPEG imageFormat = "JPEG"
	formatTIFF imageFormat = "TIFF"
	formatBMP  imageFormat = "BMP"
)

func sniff(b []byte) (imageFormat, bool) {
	switch {
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		return formatPNG, true
	case bytes.HasPrefix(b, []byte{0xFF, 0xD8, 0xFF}):
		return formatJPEG, true
	case bytes.HasPrefix(b, []byte("II*\x00")), bytes.HasPrefix(b, []byte("MM\x00*")):
		return formatTIFF, true
	case bytes.HasPrefix(b, []byte("BM")):
		return formatBMP, true
	}
	return "", false
}

// ReadFile reads an image file into buf (grown as needed and returned, so
// that a worker can reuse one buffer), refusing files above MaxBytes without
// reading them.
func (d *Decoder) ReadFile(path string, buf []byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return buf, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return buf, err
	}
	if st.IsDir() {
		return buf, fmt.Errorf("%s is a directory", path)
	}
	if st.Size() > d.opts.MaxBytes {
		return buf, imgErr(ErrTooLarge, "file is %d bytes, limit %d", st.Size(), d.opts.MaxBytes)
	}
	if need := int(st.Size()) + 512; cap(buf) < need {
		buf = make([]byte, 0, need)
	}
	buf = buf[:0]
	// Read to EOF rather than trusting Size: the file may still be growing
	// while the microscope writes it.
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > d.opts.MaxBytes {
				return buf[:0], imgErr(ErrTooLarge, "file grew beyond %d bytes", d.opts.MaxBytes)
			}
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf[:0], err
		}
	}
}

// Header checks data without decoding pixels and returns its format and
// dimensions: the bomb guard and the cheap checks for empty, non-image and
// truncated files.
func (d *Decoder) Header(data []byte) (format string, width, height int, err error) {
	f, w, h, err := d.header(data)
	return string(f), w, h, err
}

func (d *Decoder) header(data []byte) (imageFormat, int, int, error) {
	if len(data) == 0 {
		return "", 0, 0, imgErr(ErrEmpty, "file has zero bytes")
	}
	if int64(len(data)) > d.opts.MaxBytes {
		return "", 0, 0, imgErr(ErrTooLarge, "%d bytes, limit %d", len(data), d.opts.MaxBytes)
	}
	format, ok := sniff(data)
	if !ok {
		if looksLikeText(data) {
			return "", 0, 0, imgErr(ErrNotImage, "file holds text, not PNG, JPEG, TIFF or BMP data")
		}
		return "", 0, 0, imgErr(ErrNotImage, "unknown file signature % x; expected PNG, JPEG, TIFF or BMP", data[:min(len(data), 8)])
	}
	w, h, err := dimensions(format, data)
	if err != nil {
		return format, 0, 0, err
	}
	if w <= 0 || h <= 0 {
		return format, w, h, imgErr(ErrDecode, "%s header claims %dx%d pixels", format, w, h)
	}
	if int64(w)*int64(h) > d.opts.MaxPixels {
		return format, w, h, imgErr(ErrTooLarge, "%s header claims %dx%d = %d pixels, limit %d", format, w, h, int64(w)*int64(h), d.opts.MaxPixels)
	}
	if err := checkComplete(format, data); err != nil {
		return format, w, h, err
	}
	return format, w, h, nil
}

func dimensions(format imageFormat, data []byte) (int, int, error) {
	if format == formatTIFF {
		// Not image.DecodeConfig: golang.org/x/image/tiff allocates
		// whatever an IFD entry's count claims before noticing the file is
		// shorter, so a 500-byte file can cost gigabytes and seconds.
		return tiffDimensions(data)
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err == nil {
		return cfg.Width, cfg.Height, nil
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return 0, 0, imgErr(ErrTruncated, "%s header ends after %d bytes", format, len(data))
	}
	// x/image/bmp refuses some valid variants (RLE, OS/2 headers) that
	// OpenCV reads; the size fields are at fixed offsets in every variant.
	if format == formatBMP && len(data) >= 26 {
		w := int32(binary.LittleEndian.Uint32(data[18:]))
		h := int32(binary.LittleEndian.Uint32(data[22:]))
		if h < 0 {
			h = -h
		}
		return int(w), int(h), nil
	}
	return 0, 0, imgErr(ErrDecode, "%s header: %v", format, err)
}

// TIFF tags read by tiffDimensions.
const (
	tiffImageWidth  = 256
	tiffImageLength = 257
	tiffTileWidth   = 322
	tiffTileLength  = 323
)

// tiffDimensions reads the first IFD's ImageWidth and ImageLength, touching
// only the 12-byte directory entries. Tiled images must also declare tiles
// no larger than the image itself rounded up to 16-pixel multiples, since
// the decoder allocates a whole tile before reading it.
func tiffDimensions(data []byte) (int, int, error) {
	var bo binary.ByteOrder = binary.LittleEndian
	if data[0] == 'M' {
		bo = binary.BigEndian
	}
	if len(data) < 8 {
		return 0, 0, imgErr(ErrTruncated, "TIFF header ends after %d bytes", len(data))
	}
	off := int64(bo.Uint32(data[4:]))
	if off < 8 || off+2 > int64(len(data)) {
		return 0, 0, imgErr(ErrTruncated, "TIFF directory at offset %d is beyond the file's %d bytes", off, len(data))
	}
	n := int64(bo.Uint16(data[off:]))
	if off+2+12*n > int64(len(data)) {
		return 0, 0, imgErr(ErrTruncated, "TIFF directory of %d entries at offset %d is beyond the file's %d bytes", n, off, len(data))
	}
	var w, h, tw, th int64 = -1, -1, 0, 0
	for i := range n {
		e := data[off+2+12*i:]
		var v int64
		switch bo.Uint16(e[2:]) { // field type
		case 3: // SHORT
			v = int64(bo.Uint16(e[8:]))
		case 4: // LONG
			v = int64(bo.Uint32(e[8:]))
		default:
			continue
		}
		switch bo.Uint16(e) {
		case tiffImageWidth:
			w = v
		case tiffImageLength:
			h = v
		case tiffTileWidth:
			tw = v
		case tiffTileLength:
			th = v
		}
	}
	if w < 0 || h < 0 {
		return 0, 0, imgErr(ErrDecode, "TIFF directory lacks ImageWidth or ImageLength")
	}
	if tw > (w+15)/16*16 || th > (h+15)/16*16 {
		return 0, 0, imgErr(ErrDecode, "TIFF tiles of %dx%d are larger than the %dx%d image", tw, th, w, h)
	}
	return int(w), int(h), nil
}

// checkComplete catches files cut short after a valid header. Decoders do
// not reliably fail on these (libjpeg fills the missing rows with grey and
// only warns), so the container's end marker is checked explicitly.
func checkComplete(format imageFormat, data []byte) error {
	switch format {
	case formatPNG:
		if !bytes.Contains(data[8:], []byte("IEND")) {
			return imgErr(ErrTruncated, "PNG has no IEND chunk (file ends after %d bytes)", len(data))
		}
	case formatJPEG:
		sos := bytes.Index(data, []byte{0xFF, 0xDA})
		eoi := bytes.LastIndex(data, []byte{0xFF, 0xD9})
		if sos < 0 {
			return imgErr(ErrTruncated, "JPEG has no image data (no SOS marker in %d bytes)", len(data))
		}
		if eoi < sos {
			return imgErr(ErrTruncated, "JPEG has no end-of-image marker (file ends after %d bytes)", len(data))
		}
	case formatBMP:
		if len(data) < 54 {
			return imgErr(ErrTruncated, "BMP header ends after %d bytes", len(data))
		}
		offset := int64(binary.LittleEndian.Uint32(data[10:]))
		w := int64(int32(binary.LittleEndian.Uint32(data[18:])))
		h := int64(int32(binary.LittleEndian.Uint32(data[22:])))
		if h < 0 {
			h = -h
		}
		bpp := int64(binary.LittleEndian.Uint16(data[28:]))
		compression := binary.LittleEndian.Uint32(data[30:])
		if compression == 0 && bpp > 0 { // BI_RGB: the pixel array size is known
			stride := (w*bpp + 31) / 32 * 4
			if need := offset + stride*h; int64(len(data)) < need {
				return imgErr(ErrTruncated, "BMP pixel data needs %d bytes, file has %d", need, len(data))
			}
		}
	}
	return nil
}

func looksLikeText(b []byte) bool {
	b = b[:min(len(b), 512)]
	if !utf8.Valid(b) {
		// The sample may cut a multi-byte rune; trim up to 3 bytes.
		for i := 1; i <= 3 && len(b) > 0; i++ {
			b = b[:len(b)-1]
			if utf8.Valid(b) {
				break
			}
		}
		if !utf8.Valid(b) {
			return false
		}
	}
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return true
}

// Decode checks data (see Header) and decodes it into a new 8-bit BGR Mat
// that the caller must Close. Grey and alpha images are converted to three
// channels (alpha is dropped, as PIL's convert("RGB") does); 16-bit images
// are scaled to 8 bits.
func (d *Decoder) Decode(data []byte) (gocv.Mat, error) {
	format, w, h, err := d.header(data)
	if err != nil {
		return gocv.Mat{}, err
	}
	m, err := gocv.IMDecode(data, gocv.IMReadUnchanged)
	if err != nil {
		return gocv.Mat{}, imgErr(ErrDecode, "%s: %v", format, err)
	}
	if m.Empty() {
		m.Close()
		return gocv.Mat{}, imgErr(ErrDecode, "OpenCV could not decode the %s data (%d bytes, header %dx%d)", format, len(data), w, h)
	}
	if m.Cols() != w || m.Rows() != h {
		m.Close()
		return gocv.Mat{}, imgErr(ErrDecode, "%s decoded to %dx%d but its header claims %dx%d", format, m.Cols(), m.Rows(), w, h)
	}
	out, err := toBGR8(m, format)
	if err != nil {
		return gocv.Mat{}, err
	}
	return out, nil
}

// toBGR8 converts m to 8-bit BGR, consuming m.
func toBGR8(m gocv.Mat, format imageFormat) (gocv.Mat, error) {
	depth := m.Type() & 7 // CV_MAT_DEPTH
	switch depth {
	case gocv.MatTypeCV8U:
	case gocv.MatTypeCV16U:
		// 65535 maps to 255; ConvertTo rounds and saturates.
		m8 := gocv.NewMat()
		m.ConvertToWithParams(&m8, gocv.MatTypeCV8U, 1.0/257, 0)
		m.Close()
		m = m8
	default:
		m.Close()
		return gocv.Mat{}, imgErr(ErrUnsupported, "%s with sample depth %s; want 8 or 16 bits per channel", format, depthName(depth))
	}
	var code gocv.ColorConversionCode
	switch m.Channels() {
	case 3:
		return m, nil
	case 1:
		code = gocv.ColorGrayToBGR
	case 4:
		code = gocv.ColorBGRAToBGR
	default:
		n := m.Channels()
		m.Close()
		return gocv.Mat{}, imgErr(ErrUnsupported, "%s with %d channels; want grey, RGB or RGBA", format, n)
	}
	out := gocv.NewMat()
	gocv.CvtColor(m, &out, code)
	m.Close()
	return out, nil
}

func depthName(d gocv.MatType) string {
	switch d {
	case gocv.MatTypeCV8S:
		return "8-bit signed"
	case gocv.MatTypeCV16S:
		return "16-bit signed"
	case gocv.MatTypeCV32S:
		return "32-bit integer"
	case gocv.MatTypeCV32F:
		return "32-bit float"
	case gocv.MatTypeCV64F:
		return "64-bit float"
	}
	return fmt.Sprintf("type %d", int(d))
}
