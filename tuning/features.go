package tuning

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"unicode/utf8"
)

// FeaturesFormat is the format line of a features file's header; a reader
// refuses any other, so that a change of layout is a new version, never a
// silent misreading.
const FeaturesFormat = "scopewatch.features/v1"

// Bounds of a features file. They are far above any real dataset and exist
// so that a damaged or hostile header cannot make a reader allocate
// gigabytes before it notices.
const (
	maxFeaturesHeader = 64 << 10 // bytes of the JSON header line
	maxFeaturesDim    = 1 << 16  // as inference's outputs.features_dim
	maxFeaturesRows   = 1 << 24
	maxFeaturesValues = 1 << 30 // n*dim float32s: 4 GiB
	maxFeaturesClass  = 256     // classes
	maxClassName      = 128     // bytes
	maxModelID        = 1024    // bytes
	maxSlideID        = 1024    // bytes
	maxCropPath       = 4096    // bytes
	// minRowBytes is the smallest row without its features: label, a
	// one-byte slide id with its length, an empty path's length.
	minRowBytes = 2 + 2 + 1 + 2
	// readChunk caps what a reader of unknown length allocates ahead of the
	// bytes it has actually read.
	readChunk = 1 << 20
)

// ErrBadFeatures is wrapped by every error about the content of a features
// file (as opposed to failing to open or write it).
var ErrBadFeatures = errors.New("bad features file")

// Features are the cached backbone features of a labelled folder of crops:
// one row per crop, what the head trains on without running the backbone
// again for every trial.
//
// On disk (FeaturesFormat), all integers little-endian:
//
//	header  one line of JSON (at most 64 KiB) ending in '\n':
//	        {"format":"scopewatch.features/v1","model":"<backbone id>",
//	         "dim":576,"n":10000,"classes":["uninfected","parasitized"]}
//	n rows  label  uint16, an index into classes
//	        slide  uint16 length, then that many bytes of UTF-8 (1..1024)
//	        path   uint16 length, then that many bytes of UTF-8 (0..4096)
//	        x      dim float32 (IEEE 754), every one finite
//	trailer uint32 CRC-32C (Castagnoli) of every byte before it, header
//	        included
//
// The header is JSON so that `head -1` tells what a file holds and which
// backbone made it; the rows are binary because 10,000 × 576 floats as text
// would be slow to parse and four times the size. The checksum catches a
// flipped bit that would otherwise train on a wrong number unnoticed.
type Features struct {
	// Model identifies the backbone that computed the features (for
	// example its bundle's version and sha256): features from another
	// backbone are meaningless to a head trained for this one.
	Model   string
	Dim     int
	Classes []string
	// X holds the rows one after another: row i is X[i*Dim : (i+1)*Dim].
	X []float32
	// Label, Slide and Path have one entry per row: the class index, the
	// slide the crop came from (the unit of the train/validation split, as
	// crops of one slide are not independent), and the crop's path for
	// tracing a row back to its image.
	Label []int
	Slide []string
	Path  []string
}

// N is the number of rows.
func (f *Features) N() int { return len(f.Label) }

// Row returns row i's features (a view into X).
func (f *Features) Row(i int) []float32 { return f.X[i*f.Dim : (i+1)*f.Dim] }

type featuresHeader struct {
	Format  string   `json:"format"`
	Model   string   `json:"model"`
	Dim     int      `json:"dim"`
	N       int      `json:"n"`
	Classes []string `json:"classes"`
}

// Validate checks everything a features file promises: the shapes agree,
// every label is a class index, every value is finite, every string fits
// the format. Errors wrap ErrBadFeatures.
func (f *Features) Validate() error {
	if err := validateFeaturesHeader(featuresHeader{Format: FeaturesFormat, Model: f.Model, Dim: f.Dim, N: len(f.Label), Classes: f.Classes}); err != nil {
		return err
	}
	n := len(f.Label)
	if len(f.X) != n*f.Dim {
		return fmt.Errorf("%w: %d values for %d rows of %d", ErrBadFeatures, len(f.X), n, f.Dim)
	}
	if len(f.Slide) != n || len(f.Path) != n {
		return fmt.Errorf("%w: %d labels, %d slide ids and %d paths; want one of each per row", ErrBadFeatures, n, len(f.Slide), len(f.Path))
	}
	for i := range n {
		if err := validateRowMeta(f.Label[i], f.Slide[i], f.Path[i], len(f.Classes)); err != nil {
			return fmt.Errorf("%w: row %d: %v", ErrBadFeatures, i, err)
		}
	}
	for i, v := range f.X {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("%w: row %d: feature %d is %v", ErrBadFeatures, i/f.Dim, i%f.Dim, v)
		}
	}
	return nil
}

func validateFeaturesHeader(h featuresHeader) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: header: %s", ErrBadFeatures, fmt.Sprintf(format, args...))
	}
	switch {
	case h.Format != FeaturesFormat:
		return bad("format %q, want %q", h.Format, FeaturesFormat)
	case h.Model == "" || len(h.Model) > maxModelID || !utf8.ValidString(h.Model):
		return bad("model must be 1..%d bytes of UTF-8 naming the backbone", maxModelID)
	case h.Dim < 1 || h.Dim > maxFeaturesDim:
		return bad("dim %d: accepted 1..%d", h.Dim, maxFeaturesDim)
	case h.N < 0 || h.N > maxFeaturesRows:
		return bad("n %d: accepted 0..%d", h.N, maxFeaturesRows)
	case h.N*h.Dim > maxFeaturesValues:
		return bad("n*dim = %d values: at most %d are accepted", h.N*h.Dim, maxFeaturesValues)
	case len(h.Classes) < 2 || len(h.Classes) > maxFeaturesClass:
		return bad("%d classes: accepted 2..%d", len(h.Classes), maxFeaturesClass)
	}
	for i, c := range h.Classes {
		if c == "" || len(c) > maxClassName || !utf8.ValidString(c) {
			return bad("classes[%d] must be 1..%d bytes of UTF-8", i, maxClassName)
		}
		if slices.Index(h.Classes, c) != i {
			return bad("classes[%d] %q appears twice", i, c)
		}
	}
	return nil
}

func validateRowMeta(label int, slide, path string, classes int) error {
	switch {
	case label < 0 || label >= classes:
		return fmt.Errorf("label %d is not a class index (0..%d)", label, classes-1)
	case slide == "" || len(slide) > maxSlideID || !utf8.ValidString(slide):
		return fmt.Errorf("slide id must be 1..%d bytes of UTF-8", maxSlideID)
	case len(path) > maxCropPath || !utf8.ValidString(path):
		return fmt.Errorf("path must be 0..%d bytes of UTF-8", maxCropPath)
	}
	return nil
}

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// WriteFeatures validates f and writes it to path atomically: to a
// temporary file in the same folder, fsynced, then renamed over path, so
// that a crash leaves either the old file or the new one, never half of
// one that a study would then train on.
func WriteFeatures(path string, f *Features) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("features %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("features: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp makes the file private; a features file is a dataset to
	// share like the images it came from.
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("features: %w", err)
	}
	w := bufio.NewWriterSize(tmp, 1<<20)
	if err := writeFeaturesTo(w, f); err != nil {
		return fmt.Errorf("features %s: %w", path, err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("features %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("features %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("features %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("features: %w", err)
	}
	done = true
	// The rename is durable only once the folder is synced; a failure here
	// is reported because the caller believes the file is safe.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("features %s: sync folder: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("features %s: sync folder: %w", path, err)
	}
	return nil
}

// writeFeaturesTo writes a validated f in FeaturesFormat.
func writeFeaturesTo(w io.Writer, f *Features) error {
	crc := crc32.New(crc32c)
	mw := io.MultiWriter(w, crc)
	hdr, err := json.Marshal(featuresHeader{Format: FeaturesFormat, Model: f.Model, Dim: f.Dim, N: f.N(), Classes: f.Classes})
	if err != nil {
		return err
	}
	if _, err := mw.Write(append(hdr, '\n')); err != nil {
		return err
	}
	row := make([]byte, 0, 6+maxSlideID+maxCropPath+4*f.Dim)
	for i := range f.N() {
		row = binary.LittleEndian.AppendUint16(row[:0], uint16(f.Label[i]))
		row = binary.LittleEndian.AppendUint16(row, uint16(len(f.Slide[i])))
		row = append(row, f.Slide[i]...)
		row = binary.LittleEndian.AppendUint16(row, uint16(len(f.Path[i])))
		row = append(row, f.Path[i]...)
		for _, v := range f.Row(i) {
			row = binary.LittleEndian.AppendUint32(row, math.Float32bits(v))
		}
		if _, err := mw.Write(row); err != nil {
			return err
		}
	}
	_, err = w.Write(binary.LittleEndian.AppendUint32(nil, crc.Sum32()))
	return err
}

// ReadFeatures reads and validates a features file. Errors name the file;
// those about its content wrap ErrBadFeatures and say what is wrong and
// where (header field, row, offset). A header whose rows cannot fit in the
// file is refused before anything is allocated for them.
func ReadFeatures(path string) (*Features, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("features: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("features: %w", err)
	}
	f, err := readFeatures(fh, st.Size())
	if err != nil {
		return nil, fmt.Errorf("features %s: %w", path, err)
	}
	return f, nil
}

// ReadFeaturesFrom reads a features file from r, whose length is unknown:
// memory grows with the bytes actually read, never ahead of them by more
// than a few MiB, whatever the header claims.
func ReadFeaturesFrom(r io.Reader) (*Features, error) {
	return readFeatures(r, -1)
}

// featuresReader reads the body, hashing what it consumes and counting the
// offset for error messages.
type featuresReader struct {
	br  *bufio.Reader
	crc hash.Hash32
	off int64
}

func (r *featuresReader) full(b []byte) error {
	n, err := io.ReadFull(r.br, b)
	r.crc.Write(b[:n])
	r.off += int64(n)
	return err
}

func (r *featuresReader) u16(scratch []byte) (int, error) {
	if err := r.full(scratch[:2]); err != nil {
		return 0, err
	}
	return int(binary.LittleEndian.Uint16(scratch)), nil
}

// readFeatures reads FeaturesFormat from r; size is r's length, or -1 when
// unknown.
func readFeatures(r io.Reader, size int64) (*Features, error) {
	rd := &featuresReader{br: bufio.NewReaderSize(r, maxFeaturesHeader+1), crc: crc32.New(crc32c)}
	line, err := rd.br.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, fmt.Errorf("%w: no header line in the first %d bytes; not a features file", ErrBadFeatures, maxFeaturesHeader)
	case errors.Is(err, io.EOF) && len(line) == 0:
		return nil, fmt.Errorf("%w: the file is empty", ErrBadFeatures)
	case errors.Is(err, io.EOF):
		return nil, fmt.Errorf("%w: the header line has no end; not a features file, or truncated", ErrBadFeatures)
	case err != nil:
		return nil, err
	}
	rd.crc.Write(line)
	rd.off = int64(len(line))
	if line[0] != '{' {
		return nil, fmt.Errorf("%w: does not start with a JSON header; not a %s file", ErrBadFeatures, FeaturesFormat)
	}
	var h featuresHeader
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrBadFeatures, err)
	}
	if err := validateFeaturesHeader(h); err != nil {
		return nil, err
	}
	if size >= 0 {
		least := rd.off + int64(h.N)*int64(minRowBytes+4*h.Dim) + 4
		if size < least {
			return nil, fmt.Errorf("%w: the header promises %d rows of %d features (at least %d bytes) but the file has %d bytes: truncated", ErrBadFeatures, h.N, h.Dim, least, size)
		}
	}

	f := &Features{
		Model: h.Model, Dim: h.Dim, Classes: h.Classes,
		X:     make([]float32, 0, min(h.N*h.Dim, readChunk)),
		Label: make([]int, 0, min(h.N, readChunk/h.Dim+1)),
	}
	f.Slide = make([]string, 0, cap(f.Label))
	f.Path = make([]string, 0, cap(f.Label))
	var (
		scratch = make([]byte, 2)
		str     = make([]byte, max(maxSlideID, maxCropPath))
		xs      = make([]byte, 4*h.Dim)
	)
	truncated := func(i int, what string, err error) error {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: truncated in row %d of %d (%s, offset %d)", ErrBadFeatures, i, h.N, what, rd.off)
		}
		return fmt.Errorf("row %d: %w", i, err)
	}
	for i := range h.N {
		label, err := rd.u16(scratch)
		if err != nil {
			return nil, truncated(i, "label", err)
		}
		var meta [2]string
		for k, limit := range [2]int{maxSlideID, maxCropPath} {
			n, err := rd.u16(scratch)
			if err != nil {
				return nil, truncated(i, "length", err)
			}
			if n > limit {
				return nil, fmt.Errorf("%w: row %d (offset %d): a %d-byte string, at most %d accepted", ErrBadFeatures, i, rd.off-2, n, limit)
			}
			if err := rd.full(str[:n]); err != nil {
				return nil, truncated(i, "string", err)
			}
			meta[k] = string(str[:n])
		}
		if err := validateRowMeta(label, meta[0], meta[1], len(h.Classes)); err != nil {
			return nil, fmt.Errorf("%w: row %d: %v", ErrBadFeatures, i, err)
		}
		if err := rd.full(xs); err != nil {
			return nil, truncated(i, "features", err)
		}
		for j := range h.Dim {
			v := math.Float32frombits(binary.LittleEndian.Uint32(xs[4*j:]))
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("%w: row %d: feature %d is %v", ErrBadFeatures, i, j, v)
			}
			f.X = append(f.X, v)
		}
		f.Label = append(f.Label, label)
		f.Slide = append(f.Slide, meta[0])
		f.Path = append(f.Path, meta[1])
	}
	want := rd.crc.Sum32()
	var tr [4]byte
	if _, err := io.ReadFull(rd.br, tr[:]); err != nil {
		return nil, fmt.Errorf("%w: truncated: the checksum after the last row is missing (offset %d)", ErrBadFeatures, rd.off)
	}
	if got := binary.LittleEndian.Uint32(tr[:]); got != want {
		return nil, fmt.Errorf("%w: checksum mismatch (stored %08x, computed %08x): the file is damaged", ErrBadFeatures, got, want)
	}
	if _, err := rd.br.ReadByte(); err == nil {
		return nil, fmt.Errorf("%w: bytes after the checksum (offset %d): the header's n is wrong or two files were joined", ErrBadFeatures, rd.off+4)
	}
	return f, nil
}

// SplitBySlide splits the rows of f into training and validation rows, whole
// slides at a time: crops of one slide share its staining and its patient,
// so a slide on both sides would make validation flatter the model. Slides
// are shuffled by seed and given to validation until it holds at least
// valFraction of the rows, but the last slide always trains: with two or
// more slides and 0 < valFraction < 1 both sides are non-empty, and a single
// slide all trains (the caller sees an empty validation side). Which slides
// validate depends on the slide ids, their row counts and seed only, not on
// the order of the rows; both lists are in row order. valFraction <= 0 (or
// NaN) puts every row in train, >= 1 every row in val.
func SplitBySlide(f *Features, valFraction float64, seed int64) (train, val []int) {
	count := map[string]int{}
	for _, s := range f.Slide {
		count[s]++
	}
	slides := make([]string, 0, len(count))
	for s := range count {
		slides = append(slides, s)
	}
	// Map order is random; the shuffle's input must not be.
	slices.Sort(slides)
	rng := rand.New(rand.NewPCG(uint64(seed), 0x73706c6974)) // "split"
	rng.Shuffle(len(slides), func(i, j int) { slides[i], slides[j] = slides[j], slides[i] })

	inVal := map[string]bool{}
	switch {
	case valFraction >= 1:
		for _, s := range slides {
			inVal[s] = true
		}
	case valFraction > 0:
		target := valFraction * float64(len(f.Slide))
		rows := 0
		for i, s := range slides {
			// The last slide always trains: a split with nothing to
			// train on is no split.
			if float64(rows) >= target || i == len(slides)-1 {
				break
			}
			inVal[s] = true
			rows += count[s]
		}
	}
	for i, s := range f.Slide {
		if inVal[s] {
			val = append(val, i)
		} else {
			train = append(train, i)
		}
	}
	return train, val
}
