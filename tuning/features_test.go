package tuning

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// gaussianFeatures is a labelled dataset of n rows in dim dimensions: two
// Gaussian clusters (unit variance) whose means are sep apart along a random
// direction, spread over the given number of slides, each slide holding
// both classes as a real slide does.
func gaussianFeatures(n, dim, slides int, sep float64, seed uint64) *Features {
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := make([]float64, dim)
	var norm float64
	for i := range dir {
		dir[i] = rng.NormFloat64()
		norm += dir[i] * dir[i]
	}
	norm = math.Sqrt(norm)
	f := &Features{Model: "test-backbone sha256:00", Dim: dim, Classes: []string{"uninfected", "parasitized"}}
	for r := range n {
		y := rng.IntN(2)
		sign := float64(2*y - 1)
		for i := range dim {
			f.X = append(f.X, float32(sign*sep/2*dir[i]/norm+rng.NormFloat64()))
		}
		f.Label = append(f.Label, y)
		f.Slide = append(f.Slide, fmt.Sprintf("slide-%03d", r%slides))
		f.Path = append(f.Path, fmt.Sprintf("slide-%03d/crop-%05d.png", r%slides, r))
	}
	return f
}

func encodeFeatures(t testing.TB, f *Features) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := writeFeaturesTo(&b, f); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestFeaturesRoundTrip(t *testing.T) {
	f := gaussianFeatures(57, 13, 5, 3, 1)
	f.Path[3] = "" // a path is optional
	f.Slide[4] = "slide é/ü"
	path := filepath.Join(t.TempDir(), "train.features")
	if err := WriteFeatures(path, f); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFeatures(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, f) {
		t.Fatalf("round trip changed the features:\n got %+v\nwant %+v", got.Label[:5], f.Label[:5])
	}
	// Nothing is left behind by the atomic write.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("folder holds %d entries after WriteFeatures, want only the file", len(ents))
	}
	// The header is one line of JSON that says what the file is.
	raw, _ := os.ReadFile(path)
	first, _, _ := bytes.Cut(raw, []byte("\n"))
	if !bytes.Contains(first, []byte(`"format":"scopewatch.features/v1"`)) || !bytes.Contains(first, []byte(`"n":57`)) {
		t.Errorf("header line %s", first)
	}
	// A file with no rows is valid too.
	empty := &Features{Model: "m", Dim: 4, Classes: []string{"a", "b"}, X: []float32{}, Label: []int{}, Slide: []string{}, Path: []string{}}
	if err := WriteFeatures(path, empty); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadFeatures(path); err != nil || got.N() != 0 {
		t.Fatalf("empty file: %v, %v", got, err)
	}
}

func TestWriteFeaturesRefusesInvalid(t *testing.T) {
	base := func() *Features { return gaussianFeatures(6, 3, 2, 1, 2) }
	cases := []struct {
		name string
		mod  func(f *Features)
		want string
	}{
		{"no model", func(f *Features) { f.Model = "" }, "model"},
		{"one class", func(f *Features) { f.Classes = f.Classes[:1] }, "classes"},
		{"duplicate class", func(f *Features) { f.Classes[1] = f.Classes[0] }, "appears twice"},
		{"short X", func(f *Features) { f.X = f.X[:len(f.X)-1] }, "values for 6 rows"},
		{"label out of range", func(f *Features) { f.Label[2] = 2 }, "row 2: label 2"},
		{"negative label", func(f *Features) { f.Label[0] = -1 }, "row 0: label -1"},
		{"empty slide", func(f *Features) { f.Slide[5] = "" }, "row 5: slide id"},
		{"missing paths", func(f *Features) { f.Path = nil }, "paths"},
		{"NaN feature", func(f *Features) { f.X[7] = float32(math.NaN()) }, "row 2: feature 1 is NaN"},
		{"zero dim", func(f *Features) { f.Dim = 0 }, "dim 0"},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := base()
			c.mod(f)
			path := filepath.Join(dir, "x.features")
			err := WriteFeatures(path, f)
			if !errors.Is(err, ErrBadFeatures) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("WriteFeatures: %v; want ErrBadFeatures naming the file and %q", err, c.want)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("an invalid file was written")
			}
		})
	}
}

// TestReadFeaturesRefusesDamage damages a valid file in the ways a disk, a
// copy or a wrong file do, and checks that each is refused with an error
// that says what is wrong.
func TestReadFeaturesRefusesDamage(t *testing.T) {
	good := encodeFeatures(t, gaussianFeatures(10, 4, 3, 1, 3))
	hdrLen := bytes.IndexByte(good, '\n') + 1
	rowLen := 2 + 2 + len("slide-000") + 2 + len("slide-000/crop-00000.png") + 4*4
	withHeader := func(h string) []byte {
		return append([]byte(h+"\n"), good[hdrLen:]...)
	}
	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0x10
		return b
	}
	// A row whose float is NaN, with a checksum that matches, so that the
	// value check (not the checksum) is what refuses it.
	nanRow := func() []byte {
		b := bytes.Clone(good[:len(good)-4])
		off := hdrLen + rowLen*2 + rowLen - 4
		binary.LittleEndian.PutUint32(b[off:], math.Float32bits(float32(math.Inf(1))))
		return binary.LittleEndian.AppendUint32(b, crc32Of(b))
	}
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"not a features file", []byte("P6\n640 480\n255\n"), "JSON header"},
		{"no newline", []byte(`{"format":"scopewatch.features/v1"`), "header line has no end"},
		{"huge header", bytes.Repeat([]byte("{"), maxFeaturesHeader+10), "no header line"},
		{"other version", withHeader(`{"format":"scopewatch.features/v2","model":"m","dim":4,"n":10,"classes":["a","b"]}`), `format "scopewatch.features/v2"`},
		{"unknown header key", withHeader(`{"format":"scopewatch.features/v1","model":"m","dim":4,"n":10,"classes":["a","b"],"x":1}`), `unknown field "x"`},
		{"bad json", withHeader(`{"format":`), "header"},
		{"absurd n", withHeader(`{"format":"scopewatch.features/v1","model":"m","dim":4,"n":999999999,"classes":["a","b"]}`), "n 999999999"},
		{"absurd dim", withHeader(`{"format":"scopewatch.features/v1","model":"m","dim":100000000,"n":1,"classes":["a","b"]}`), "dim 100000000"},
		{"n*dim too big", withHeader(`{"format":"scopewatch.features/v1","model":"m","dim":65536,"n":16777216,"classes":["a","b"]}`), "n*dim"},
		{"negative n", withHeader(`{"format":"scopewatch.features/v1","model":"m","dim":4,"n":-1,"classes":["a","b"]}`), "n -1"},
		{"more rows than the body", withHeader(`{"format":"scopewatch.features/v1","model":"m","dim":4,"n":11,"classes":["a","b"]}`), "row 10"},
		{"fewer rows than the body", withHeader(`{"format":"scopewatch.features/v1","model":"m","dim":4,"n":9,"classes":["a","b"]}`), "checksum"},
		{"truncated in a row", good[:hdrLen+rowLen*4+5], "truncated"},
		{"no checksum", good[:len(good)-4], "truncated"},
		{"flipped bit in a float", flip(hdrLen + rowLen*3 + rowLen - 2), "checksum mismatch"},
		{"flipped bit in a label", flip(hdrLen + rowLen*5), "row 5: label"},
		{"trailing bytes", append(bytes.Clone(good), 0), "after the checksum"},
		{"infinite feature", nanRow(), "row 2: feature 3 is +Inf"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Both readers: the one of unknown length and the file one,
			// which also checks the size against the header.
			_, err := ReadFeaturesFrom(bytes.NewReader(c.data))
			if !errors.Is(err, ErrBadFeatures) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("ReadFeaturesFrom: %v; want ErrBadFeatures and %q", err, c.want)
			}
			path := filepath.Join(t.TempDir(), "x.features")
			if err := os.WriteFile(path, c.data, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = ReadFeatures(path)
			if !errors.Is(err, ErrBadFeatures) || !strings.Contains(err.Error(), path) {
				t.Errorf("ReadFeatures: %v; want ErrBadFeatures naming %s", err, path)
			}
		})
	}
	if _, err := ReadFeatures(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func crc32Of(b []byte) uint32 { return crc32.Checksum(b, crc32c) }

// TestReadFeaturesBoundsAllocation: a header that promises a huge file,
// followed by nothing, must be refused without allocating for it.
func TestReadFeaturesBoundsAllocation(t *testing.T) {
	data := []byte(`{"format":"scopewatch.features/v1","model":"m","dim":65536,"n":16384,"classes":["a","b"]}` + "\n")
	path := filepath.Join(t.TempDir(), "x.features")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err1 := ReadFeatures(path)
	_, err2 := ReadFeaturesFrom(bytes.NewReader(data))
	runtime.ReadMemStats(&after)
	for _, err := range []error{err1, err2} {
		if !errors.Is(err, ErrBadFeatures) || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("got %v, want a truncation error", err)
		}
	}
	// 16384 × 65536 float32s would be 4 GiB; a reader that believed the
	// header would have allocated at least that.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
		t.Errorf("reading a 100-byte file allocated %d MiB", grew>>20)
	}
	if !strings.Contains(err1.Error(), fmt.Sprintf("the file has %d bytes", len(data))) {
		t.Errorf("ReadFeatures should compare with the file size: %v", err1)
	}
}

// FuzzReadFeatures reads arbitrary bytes twice: as they are, and with the
// trailer rewritten to their checksum, so that the row parser behind the
// checksum is fuzzed too rather than only the checksum.
func FuzzReadFeatures(f *testing.F) {
	good := encodeFeatures(f, gaussianFeatures(5, 3, 2, 1, 4))
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte(`{"format":"scopewatch.features/v1","model":"m","dim":1,"n":1,"classes":["a","b"]}` + "\n"))
	f.Add([]byte("{\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(data []byte) {
			ft, err := ReadFeaturesFrom(bytes.NewReader(data))
			if err != nil {
				if !errors.Is(err, ErrBadFeatures) {
					t.Fatalf("error does not wrap ErrBadFeatures: %v", err)
				}
				return
			}
			// Whatever is accepted is valid and survives a round trip.
			if err := ft.Validate(); err != nil {
				t.Fatalf("accepted invalid features: %v", err)
			}
			again, err := ReadFeaturesFrom(bytes.NewReader(encodeFeatures(t, ft)))
			if err != nil || !reflect.DeepEqual(again, ft) {
				t.Fatalf("accepted features do not round-trip: %v", err)
			}
		}
		check(data)
		if len(data) >= 4 {
			fixed := bytes.Clone(data)
			binary.LittleEndian.PutUint32(fixed[len(fixed)-4:], crc32Of(fixed[:len(fixed)-4]))
			check(fixed)
		}
	})
}

func TestSplitBySlide(t *testing.T) {
	f := gaussianFeatures(1000, 2, 37, 1, 5)
	// Uneven slides: move rows of slide 0 to slide 1.
	for i := range f.Slide {
		if i%37 == 0 && i%2 == 0 {
			f.Slide[i] = "slide-001"
		}
	}
	for _, frac := range []float64{0.1, 0.2, 0.5} {
		train, val := SplitBySlide(f, frac, 11)
		if len(train)+len(val) != f.N() {
			t.Fatalf("frac %g: %d + %d rows, want %d", frac, len(train), len(val), f.N())
		}
		inTrain := map[string]bool{}
		for _, i := range train {
			inTrain[f.Slide[i]] = true
		}
		for _, i := range val {
			if inTrain[f.Slide[i]] {
				t.Fatalf("frac %g: slide %s is in both train and val", frac, f.Slide[i])
			}
		}
		if got := float64(len(val)) / float64(f.N()); got < frac || got > frac+0.06 {
			t.Errorf("frac %g: validation holds %.3f of the rows", frac, got)
		}
		if !slices.IsSorted(train) || !slices.IsSorted(val) {
			t.Errorf("frac %g: indices not in row order", frac)
		}
		t2, v2 := SplitBySlide(f, frac, 11)
		if !slices.Equal(train, t2) || !slices.Equal(val, v2) {
			t.Errorf("frac %g: same seed, different split", frac)
		}
	}
	_, a := SplitBySlide(f, 0.2, 1)
	_, b := SplitBySlide(f, 0.2, 2)
	if slices.Equal(a, b) {
		t.Errorf("seeds 1 and 2 chose the same validation rows")
	}
	// Shuffling the rows changes no slide's side.
	perm := rand.New(rand.NewPCG(3, 3)).Perm(f.N())
	g := &Features{Dim: f.Dim, Classes: f.Classes}
	for _, i := range perm {
		g.X = append(g.X, f.Row(i)...)
		g.Label, g.Slide, g.Path = append(g.Label, f.Label[i]), append(g.Slide, f.Slide[i]), append(g.Path, f.Path[i])
	}
	_, gv := SplitBySlide(g, 0.2, 1)
	sides := func(f *Features, val []int) map[string]bool {
		m := map[string]bool{}
		for _, i := range val {
			m[f.Slide[i]] = true
		}
		return m
	}
	if !reflect.DeepEqual(sides(f, a), sides(g, gv)) {
		t.Errorf("row order changed which slides validate")
	}

	// Edge cases: two slides split one each; one slide cannot be split.
	two := gaussianFeatures(10, 2, 2, 1, 6)
	if tr, v := SplitBySlide(two, 0.9, 1); len(tr) == 0 || len(v) == 0 {
		t.Errorf("two slides at 0.9: %d train, %d val; want both sides non-empty", len(tr), len(v))
	}
	one := gaussianFeatures(10, 2, 1, 1, 6)
	if tr, v := SplitBySlide(one, 0.2, 1); len(tr) != 10 || len(v) != 0 {
		t.Errorf("one slide: %d train, %d val; want all train", len(tr), len(v))
	}
	for _, c := range []struct {
		frac     float64
		tr, want int
	}{{0, 1000, 0}, {-1, 1000, 0}, {math.NaN(), 1000, 0}, {1, 0, 1000}} {
		if tr, v := SplitBySlide(f, c.frac, 1); len(tr) != c.tr || len(v) != c.want {
			t.Errorf("frac %g: %d train, %d val; want %d, %d", c.frac, len(tr), len(v), c.tr, c.want)
		}
	}
}
