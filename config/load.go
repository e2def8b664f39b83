package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// Errors is every problem found in one file, one per line.
type Errors []string

func (e Errors) Error() string { return strings.Join(e, "\n") }

// Load reads, validates and returns the configuration in path. Warnings are
// things that work but probably not as meant (keepalive slower than the
// path's idle timeout, an exposed admin listener).
func Load(path string) (*Config, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return Parse(data, path)
}

// Parse is Load for text already read; source names it in messages.
func Parse(data []byte, source string) (*Config, []string, error) {
	var c Config
	var raw rawConfig
	// Positions are counted in the text without its BOM, as the library
	// counts them (with it, a syntax error at a line's start was put at
	// the end of the line before); and a first line "\ufeff[log]" read
	// as no header put every unknown key of that table at 1:1.
	text := strings.TrimPrefix(string(data), "\ufeff")
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if strings.HasPrefix(pe.Message, "invalid UTF-8 byte") {
				// The library places it at the start of its token (a
				// comment's '#'): the byte itself is the first that is not
				// UTF-8.
				if i := firstInvalidUTF8(text); i >= 0 {
					pe.Position.Start = i
				}
				line, col := position([]byte(text), pe)
				return nil, nil, Errors{fmt.Sprintf("%s:%d:%d: %s (TOML files must be UTF-8: save the file as UTF-8)", source, line, col, pe.Message)}
			}
			if line, col, msg, ok := unquoted(text, pe); ok {
				return nil, nil, Errors{fmt.Sprintf("%s:%d:%d: %s", source, line, col, msg)}
			}
			line, col := position([]byte(text), pe)
			return nil, nil, Errors{fmt.Sprintf("%s:%d:%d: %s", source, line, col, parseMessage(pe))}
		}
		return nil, nil, Errors{source + ":" + mismatch(text, err)}
	}
	// Each table is decoded on its own, so that a value of the wrong type
	// in one does not hide those of the others, and the one reported does
	// not depend on map order. The library places such an error at the
	// last line that sets a key of that name in any table alike (the
	// second [[listener]]'s idle_timeout = "30m" for the first's "30"):
	// its line is found in its own table.
	errs, failed := decodeParts(&md, raw, &c, text, source)
	decodeFailed := len(errs) > 0
	seen := map[string]bool{} // a key of every [[listener]] is reported once
	var unknown []toml.Key    // reported: the keys inside an unknown table are not
	for _, k := range md.Undecoded() {
		if decodeFailed && knownKey(k) { // left undecoded by a failed table
			continue
		}
		if knownKey(k) && caseTwin(md.Keys(), k) {
			// log.format beside LOG.level: the library decodes log and LOG
			// into one field, the one it meets last in map order, and the
			// other's keys are left undecoded. A right key was reported
			// unknown, or not, from one run to the next; the wrong case
			// is the error.
			continue
		}
		if n, _ := caseMismatch(k); n > 0 {
			if i, _ := walkKey(k, true); i < 0 {
				// [listener.Keepalive] whose count did not decode, and
				// its keys: the loop below says it is in the wrong
				// case, where this said only "unknown key", once for it
				// and once for each of its keys.
				continue
			}
		}
		// A dotted key of an unknown table (helth.check = "tcp") is that
		// table, as [backend.helth] is: each key of it was an error of
		// its own, with no "did you mean" (the library lists no table
		// for dotted keys, only the keys).
		if i, _ := walkKey(k, true); i >= 0 && i < len(k)-1 {
			k = k[:i+1]
		}
		if seen[k.String()] {
			continue
		}
		// An unknown table is one error, at its header: its keys are
		// unknown because it is (a misspelled [listener.keepalvie] gave
		// one more error for each key in it, each a "did you mean" that
		// did not help).
		if slices.ContainsFunc(unknown, func(t toml.Key) bool { return len(t) < len(k) && slices.Equal(t, k[:len(t)]) }) {
			continue
		}
		seen[k.String()] = true
		unknown = append(unknown, k)
		line, col := locateKey(text, k)
		msg := fmt.Sprintf("%s:%d:%d: unknown key %q", source, line, col, k.String())
		if near := suggest(k); near != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", near)
		} else if home := homeTable(k); home != "" {
			msg += fmt.Sprintf(" (it belongs in %s)", home)
		} else if home := otherTable(k); home != "" {
			msg += fmt.Sprintf(" (it belongs in %s)", home)
		}
		errs = append(errs, msg)
	}
	// The library matches keys to fields ignoring case, so Allow or
	// MAX_SESSIONS would pass silently (and with both allow and Allow in a
	// table, either could win): keys are lower case, as written here. A
	// key is reported at its first part so spelled (Keepalive.idle as
	// listener.Keepalive), once.
	typeErrs := errs[:len(errs):len(errs)] // decodeParts' errors: a value of the wrong type
	for _, k := range md.Keys() {
		n, want := caseMismatch(k)
		if n == 0 || seen[k[:n].String()] {
			continue
		}
		seen[k[:n].String()] = true
		line, col := locateKey(text, k)
		msg := fmt.Sprintf("%s:%d:%d: unknown key %q: keys are lower case (%q)", source, line, col, k[:n].String(), want)
		// The library decodes Max_Sessions = "ten" into max_sessions, and
		// its type error was a second error for the one line. It is one,
		// that says both.
		// A table in the wrong case ([listener.Keepalive]) is not: the
		// type errors of its keys are on lines of their own.
		named := fmt.Sprintf(": key %q: ", k.String())
		if j := slices.IndexFunc(typeErrs, func(e string) bool {
			return n == len(k) && lineNumber(strings.TrimPrefix(e, source+":")) == line && strings.Contains(e, named)
		}); j >= 0 {
			_, wrong, _ := strings.Cut(typeErrs[j], named)
			errs[j] = msg + ", and its value is wrong too: " + wrong
			continue
		}
		errs = append(errs, msg)
	}
	// Unknown keys were left out of c, and so were the values of the wrong
	// type (each key that did not decode is in failed): what is there is
	// checked too, so one run of check shows every error it can. A check
	// that reads a key that did not decode is skipped (validate): its
	// error would be made up, or the type error again.
	c.Source, c.text = source, text
	for i := range c.Listeners {
		failed.derived(&c.Listeners[i].Keepalive)
	}
	for i := range c.Backends {
		failed.derived(&c.Backends[i].Keepalive)
	}
	defaulted := c.applyDefaults(writtenEmpty(text))
	verrs, warnings, errAt, warnAt := c.validate(defaulted, failed)
	errs = append(errs, withLines(source, text, verrs, errAt)...)
	warnings = withLines(source, text, warnings, warnAt)
	if len(errs) > 0 {
		return nil, warnings, errs
	}
	return &c, warnings, nil
}

// rawConfig is Config's top level, each table left for its own decoding.
type rawConfig struct {
	Log       toml.Primitive   `toml:"log"`
	Admin     toml.Primitive   `toml:"admin"`
	Shutdown  toml.Primitive   `toml:"shutdown"`
	Reload    toml.Primitive   `toml:"reload"`
	Listeners []toml.Primitive `toml:"listener"`
	Backends  []toml.Primitive `toml:"backend"`
}

// decodeParts decodes each table of raw into c, and returns an error for
// each value of the wrong type, in the file's order of kinds, and the
// fields of c that did not decode (left at their zero value).
func decodeParts(md *toml.MetaData, raw rawConfig, c *Config, text, source string) (Errors, failedSet) {
	var errs Errors
	failed := failedSet{}
	var again *rawConfig // the text decoded anew, for the errors of a table one key at a time
	var md2 toml.MetaData
	one := func(p toml.Primitive, dst reflect.Value, part func(*rawConfig) (toml.Primitive, bool), kind string, index int) {
		err := md.PrimitiveDecode(p, dst.Addr().Interface())
		if err == nil {
			return
		}
		// The library stops at a table's first wrong value, picked in map
		// order, and leaves the table half filled: decode that table again
		// key by key (on a MetaData of its own, so that what this marks
		// decoded does not hide unknown keys), for every wrong value, in
		// the order of their lines, and for every value that is right.
		if again == nil {
			again = new(rawConfig)
			md2, _ = toml.Decode(text, again)
		}
		dst.SetZero()
		var each []string
		fail := func(err error, elem []int, v reflect.Value) {
			each = append(each, decodeError(text, err, kind, index, elem))
			v.SetZero()
			failed.mark(v)
		}
		if q, ok := part(again); ok {
			decodeEach(&md2, q, dst, nil, fail)
		}
		if len(each) == 0 {
			// No key to blame: none of the table is taken as decoded.
			dst.SetZero()
			failed.mark(dst)
			each = []string{decodeError(text, err, kind, index, nil)}
		}
		sort.SliceStable(each, func(a, b int) bool { return lineNumber(each[a]) < lineNumber(each[b]) })
		for _, e := range each {
			errs = append(errs, source+":"+e)
		}
	}
	one(raw.Log, reflect.ValueOf(&c.Log).Elem(), func(r *rawConfig) (toml.Primitive, bool) { return r.Log, true }, "", 0)
	one(raw.Admin, reflect.ValueOf(&c.Admin).Elem(), func(r *rawConfig) (toml.Primitive, bool) { return r.Admin, true }, "", 0)
	one(raw.Shutdown, reflect.ValueOf(&c.Shutdown).Elem(), func(r *rawConfig) (toml.Primitive, bool) { return r.Shutdown, true }, "", 0)
	one(raw.Reload, reflect.ValueOf(&c.Reload).Elem(), func(r *rawConfig) (toml.Primitive, bool) { return r.Reload, true }, "", 0)
	c.Listeners = make([]Listener, len(raw.Listeners))
	for i := range raw.Listeners {
		one(raw.Listeners[i], reflect.ValueOf(&c.Listeners[i]).Elem(), func(r *rawConfig) (toml.Primitive, bool) {
			if i < len(r.Listeners) {
				return r.Listeners[i], true
			}
			return toml.Primitive{}, false
		}, "listener", i)
	}
	c.Backends = make([]Backend, len(raw.Backends))
	for i := range raw.Backends {
		one(raw.Backends[i], reflect.ValueOf(&c.Backends[i]).Elem(), func(r *rawConfig) (toml.Primitive, bool) {
			if i < len(r.Backends) {
				return r.Backends[i], true
			}
			return toml.Primitive{}, false
		}, "backend", i)
	}
	if len(raw.Listeners) == 0 {
		c.Listeners = nil
	}
	if len(raw.Backends) == 0 {
		c.Backends = nil
	}
	return errs, failed
}

// failedSet holds the fields of a Config that did not decode, each by its
// address (a typed pointer: &l.MaxSessions, &b.Keepalive), with every
// field inside one that did not decode as a whole (keepalive = "60s").
type failedSet map[any]bool

// mark records v, an addressable field, and every field inside it.
func (f failedSet) mark(v reflect.Value) {
	if !v.CanAddr() {
		return
	}
	f[v.Addr().Interface()] = true
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				f.mark(v.Field(i))
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			f.mark(v.Index(i))
		}
	}
}

// derived adds to f the keys of k that the file left out when its
// path_idle_timeout did not decode: applyDefaults derives them from that
// (idle, interval, count, user_timeout), and the leg's plain defaults they
// get instead are no value of the file's to check.
func (f failedSet) derived(k *Keepalive) {
	if !f[&k.PathIdleTimeout] {
		return
	}
	for _, d := range []*Duration{&k.Idle, &k.Interval, &k.UserTimeout} {
		if !d.Set {
			f[d] = true
		}
	}
	if k.Count == nil {
		f[&k.Count] = true
	}
}

// any tells whether any of the fields (pointers into the Config) did not
// decode.
func (f failedSet) any(fields ...any) bool {
	for _, p := range fields {
		if f[p] {
			return true
		}
	}
	return false
}

// decodeEach decodes the table p into the struct rv one key at a time,
// and calls fail with the error of each key that does not decode, elem
// (which element p is of each array of tables on the way to it: the
// second [[backend.server]] of its backend: [1]) and the field it was for.
// Every other key is decoded into rv.
func decodeEach(md *toml.MetaData, p toml.Primitive, rv reflect.Value, elem []int, fail func(error, []int, reflect.Value)) {
	var m map[string]toml.Primitive
	if err := md.PrimitiveDecode(p, &m); err != nil {
		fail(err, elem, rv)
		return
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		f, ok := fieldFor(rv.Type(), k)
		if !ok {
			continue // unknown: reported as such
		}
		fv := rv.FieldByIndex(f.Index)
		switch t := f.Type; {
		case t.Kind() == reflect.Struct && t != reflect.TypeFor[Duration]():
			decodeTable(md, m[k], fv, elem, fail)
		case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
			var elems []toml.Primitive
			if err := md.PrimitiveDecode(m[k], &elems); err != nil {
				fail(err, elem, fv)
				continue
			}
			s := reflect.MakeSlice(t, len(elems), len(elems))
			fv.Set(s) // before the elements: what fail marks is fv's own
			for j, e := range elems {
				decodeTable(md, e, s.Index(j), append(slices.Clip(elem), j), fail)
			}
		default:
			if err := md.PrimitiveDecode(m[k], fv.Addr().Interface()); err != nil {
				fail(err, elem, fv)
			}
		}
	}
}

// decodeTable is decodeEach for a table inside a table, and reports its
// error as a whole when it has no key to blame: the library decodes a
// value that is no table (keepalive = "60s") into decodeEach's map
// without a word.
func decodeTable(md *toml.MetaData, p toml.Primitive, rv reflect.Value, elem []int, fail func(error, []int, reflect.Value)) {
	err := md.PrimitiveDecode(p, rv.Addr().Interface())
	if err == nil {
		return
	}
	rv.SetZero() // half filled
	failed := false
	decodeEach(md, p, rv, elem, func(err error, elem []int, v reflect.Value) { failed = true; fail(err, elem, v) })
	if !failed {
		fail(err, elem, rv)
	}
}

// writtenEmpty returns whether text sets the key at path (keys, and the
// indexes of arrays of tables: "listener", 0, "proxy_protocol") to "", in
// any spelling TOML has: in a table, dotted, or inline. A key of the
// wrong type (level = 3) or left out is not.
func writtenEmpty(text string) func(path ...any) bool {
	var tree map[string]any
	toml.Decode(text, &tree) // decoded once already: no syntax error
	return func(path ...any) bool {
		var v any = tree
		for _, p := range path {
			switch p := p.(type) {
			case string:
				m, ok := v.(map[string]any)
				if !ok {
					return false
				}
				v = m[p]
			case int:
				switch a := v.(type) {
				case []map[string]any:
					if p >= len(a) {
						return false
					}
					v = a[p]
				case []any:
					if p >= len(a) {
						return false
					}
					v = a[p]
				default:
					return false
				}
			}
		}
		s, ok := v.(string)
		return ok && s == ""
	}
}

// fieldFor is the field of struct t that the library decodes key into:
// the one so tagged, else one tagged so ignoring case.
func fieldFor(t reflect.Type, key string) (reflect.StructField, bool) {
	var folded reflect.StructField
	found := false
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if tag == key {
			return f, true
		}
		if !found && tag != "-" && strings.EqualFold(tag, key) {
			folded, found = f, true
		}
	}
	return folded, found
}

// lineNumber reads LINE from "LINE:COL: message".
func lineNumber(s string) int {
	n, _ := strconv.Atoi(s[:max(strings.IndexByte(s, ':'), 0)])
	return n
}

// decodeError renders an error of decoding the index-th table of kind
// ("" for one of a kind) as "LINE:COL: message", at the line of its key
// in that table (in its elem-th [[backend.server]], see decodeEach).
func decodeError(text string, err error, kind string, index int, elem []int) string {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		s := mismatch(text, err)
		if m := typeMismatch.FindStringSubmatch(err.Error()); m != nil && kind != "" {
			if line, ok := lineInTable(text, kind, index, elem, m[2]); ok {
				// mismatch's LINE:COL, moved to the right line
				_, msg, _ := strings.Cut(s, ": ")
				return fmt.Sprintf("%d:%d: %s", line, keyCol(text, line, m[2]), msg)
			}
		}
		return s
	}
	line, col := position([]byte(text), pe)
	msg := parseMessage(pe)
	if l, ok := lineInTable(text, kind, index, elem, pe.LastKey); ok && l != line {
		line, col = l, valueCol(text, l, pe.LastKey)
	}
	return fmt.Sprintf("%d:%d: %s", line, col, msg)
}

// parseMessage is a ParseError's message, naming the key of a bad value:
// the key a Duration was decoded for, or one given an integer out of
// TOML's range (the library names only its Go type).
func parseMessage(pe toml.ParseError) string {
	msg := pe.Message
	if pe.LastKey == "" {
		return msg
	}
	if strings.HasPrefix(msg, badDuration) {
		return fmt.Sprintf("key %q: %s", pe.LastKey, msg)
	}
	if n, ok := strings.CutSuffix(msg, " is out of range for int64"); ok {
		return fmt.Sprintf("key %q: %s is out of the integer range (%d to %d)", pe.LastKey, n, int64(math.MinInt64), int64(math.MaxInt64))
	}
	return msg
}

// lineInTable is the line that sets key (dotted, from the top) in the
// index-th table of kind; with elem, in the elem[0]-th of the arrays of
// tables in it that key is in (a key of every [[backend.server]] alike
// was put at the first server's line).
func lineInTable(text, kind string, index int, elem []int, key string) (int, bool) {
	if kind == "" || key == "" {
		return 0, false
	}
	lines := strings.Split(text, "\n")
	tables := sections(lines, kind)
	if index >= len(tables) {
		return 0, false
	}
	t := tables[index]
	if len(elem) > 0 {
		// The longest part of key before its last that names arrays of
		// tables written as headers in t: backend.server.
		parts := strings.Split(key, ".")
		for n := len(parts) - 1; n > 1; n-- {
			if sub := sections(lines[t[0]:t[1]], strings.Join(parts[:n], ".")); elem[0] < len(sub) {
				t = [2]int{t[0] + sub[elem[0]][0], t[0] + sub[elem[0]][1]}
				break
			}
		}
	}
	l, _ := locateKey(strings.Join(lines[t[0]:t[1]], "\n"), toml.Key(strings.Split(key, ".")))
	if l <= 1 {
		return 0, false
	}
	return t[0] + l, true
}

// keyCol is the column of key's last part on line, or 1.
func keyCol(text string, line int, key string) int {
	lines := strings.Split(text, "\n")
	if line < 1 || line > len(lines) {
		return 1
	}
	if i := strings.Index(lines[line-1], key[strings.LastIndexByte(key, '.')+1:]); i >= 0 {
		return i + 1
	}
	return 1
}

// suggest is the key of the table k is in that k's last part is a slip
// of (a letter left out, added, changed or two swapped; or a plural), or
// "" when there is none or a part before the last is unknown too.
func suggest(k toml.Key) string {
	i, t := walkKey(k, true)
	if i != len(k)-1 {
		return ""
	}
	part := k[i]
	best, bestD := "", 3
	for j := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(j).Tag.Get("toml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		if d := editDistance(strings.ToLower(part), tag); d < bestD && d <= max(1, len(tag)/4) {
			best, bestD = tag, d
		}
	}
	return best
}

// homeTable names the tables just below the one k's last part is unknown
// in that have a key of that name, as their headers are written
// ("[listener.keepalive]", "[[backend.server]]"; two joined by "or"), or
// "" when there is none or a part before the last is unknown too: idle in
// [[listener]] belongs in [listener.keepalive].
func homeTable(k toml.Key) string {
	i, t := walkKey(k, true)
	if i != len(k)-1 {
		return ""
	}
	var homes []string
	for j := range t.NumField() {
		f := t.Field(j)
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		ft, array := f.Type, false
		if ft.Kind() == reflect.Slice {
			ft, array = ft.Elem(), true
		}
		if tag == "" || tag == "-" || ft.Kind() != reflect.Struct || ft == reflect.TypeFor[Duration]() {
			continue
		}
		for n := range ft.NumField() {
			if sub, _, _ := strings.Cut(ft.Field(n).Tag.Get("toml"), ","); sub == k[i] {
				homes = append(homes, tableHeader(append(slices.Clone(k[:i]), tag), array))
			}
		}
	}
	return strings.Join(homes, " or ")
}

// otherTable names the tables elsewhere in Config that have a key named as
// k's last part, when that is the only unknown part of k (homeTable looks
// only below k's table): of those, the ones nearest k's table, as their
// headers are written and joined by "or". max_sessions in a [[backend]]
// belongs in [[listener]], idle in [backend.health] in [backend.keepalive]
// (not [listener.keepalive]).
func otherTable(k toml.Key) string {
	i, _ := walkKey(k, true)
	if i != len(k)-1 || i == 0 {
		return ""
	}
	type table struct {
		path  []string
		array bool
	}
	var homes []table
	best := -1
	var walk func(t reflect.Type, path []string)
	walk = func(t reflect.Type, path []string) {
		for j := range t.NumField() {
			f := t.Field(j)
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			if tag == k[i] && len(path) > 0 && !slices.Equal(path, k[:i]) {
				near := 0
				for near < min(len(path), i) && path[near] == k[near] {
					near++
				}
				if near > best {
					homes, best = nil, near
				}
				if near == best {
					homes = append(homes, table{path, t != reflect.TypeFor[Config]() && arrayOfTables(path)})
				}
			}
			ft := f.Type
			if ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[Duration]() {
				walk(ft, append(slices.Clip(path), tag))
			}
		}
	}
	walk(reflect.TypeFor[Config](), nil)
	var out []string
	for _, h := range homes {
		out = append(out, tableHeader(h.path, h.array))
	}
	return strings.Join(out, " or ")
}

// tableHeader is the header of the table at path, as a file writes it:
// [backend.health], or [[listener]] for an array of tables.
func tableHeader(path []string, array bool) string {
	if array {
		return "[[" + strings.Join(path, ".") + "]]"
	}
	return "[" + strings.Join(path, ".") + "]"
}

// arrayOfTables tells whether the table at path (listener, backend.server)
// is written [[...]]: the field it is ends in a slice of structs.
func arrayOfTables(path []string) bool {
	t, ok := typeAt(path)
	return ok && t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct
}

// typeAt is the type of the field of Config that the key k names (a map's
// element for a key of the user's own, such as a service in routes); false
// when no field takes k.
func typeAt(k []string) (reflect.Type, bool) {
	t := reflect.TypeFor[Config]()
	for _, part := range k {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		switch {
		case t.Kind() == reflect.Map:
			t = t.Elem() // part is the user's own key
			continue
		case t.Kind() != reflect.Struct || t == reflect.TypeFor[Duration]():
			return nil, false
		}
		f, ok := fieldFor(t, part)
		if !ok {
			return nil, false
		}
		t = f.Type
	}
	return t, true
}

// walkKey follows k through Config's fields (their tags as spelled, or
// with fold ignoring case, as the library matches them) and returns the
// index of the first part that no field takes, with the struct it is
// missing from; -1 when every part is a field or lies below a value with
// no fields of its own (a map such as routes, a Duration).
func walkKey(k toml.Key, fold bool) (int, reflect.Type) {
	t := reflect.TypeFor[Config]()
	for i, part := range k {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || t == reflect.TypeFor[Duration]() {
			return -1, nil
		}
		f, ok := fieldFor(t, part)
		if ok && !fold {
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			ok = tag == part
		}
		if !ok {
			return i, t
		}
		t = f.Type
	}
	return -1, nil
}

// editDistance counts the letters to add, drop, change or swap (two next
// to each other) to turn a into b.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// valueCol is the column where the value of key starts on line (inside
// its quotes, as the library counts), or key's column.
func valueCol(text string, line int, key string) int {
	col := keyCol(text, line, key)
	l := strings.Split(text, "\n")[line-1]
	i := strings.IndexByte(l[col-1:], '=')
	if i < 0 {
		return col
	}
	v := col - 1 + i + 1
	for v < len(l) && (l[v] == ' ' || l[v] == '\t') {
		v++
	}
	if v < len(l) && (l[v] == '"' || l[v] == '\'') {
		v++
	}
	return v + 1
}

// caseTwin tells whether keys has one whose first part in the wrong case
// (caseMismatch) is, but for case, a table that the right key k is in
// (LOG.level for log.format).
func caseTwin(keys []toml.Key, k toml.Key) bool {
	return slices.ContainsFunc(keys, func(j toml.Key) bool {
		n, _ := caseMismatch(j)
		if n == 0 || n >= len(k) {
			return false
		}
		for i := range n {
			if !strings.EqualFold(j[i], k[i]) {
				return false
			}
		}
		return true
	})
}

// knownKey tells whether every part of k names a field of Config (as
// spelled, or inside a map such as routes, or below a value such as a
// Duration: backoff = { a = 1 } is a type error, not an unknown key
// "backend.backoff.a" at 1:1).
func knownKey(k toml.Key) bool {
	i, _ := walkKey(k, false)
	return i < 0
}

// withLines prefixes each of validate's messages with source and ends it
// with the line it is about, when the file has one (lineOf, in the table
// at names): the contract's `FILE: listener "x": ...` stays as it was, and
// the line is named too.
func withLines(source, text string, msgs []string, at []tablePos) []string {
	out := make([]string, 0, len(msgs))
	for i, m := range msgs {
		if line := lineOf(text, m, at[i]); line > 0 {
			out = append(out, fmt.Sprintf("%s: %s (line %d)", source, m, line))
		} else {
			out = append(out, source+": "+m)
		}
	}
	return out
}

// Place is msg, an error about this configuration met when it is put to
// use (`listener "x": listen tcp ...: bind: ...`), as check reports an
// error of meaning: with the file first and the line it is about at the
// end.
func (c *Config) Place(msg string) string {
	at := tablePos{index: -1}
	if kind, _, ok := tableOf(msg); ok {
		name, _, _ := quotedPrefix(msg, kind+" ")
		switch kind { // [log], [admin]...: the file's one table of that name (lineOf)
		case "listener":
			at.kind, at.index = kind, slices.IndexFunc(c.Listeners, func(l Listener) bool { return l.Name == name })
		case "backend":
			at.kind, at.index = kind, slices.IndexFunc(c.Backends, func(b Backend) bool { return b.Name == name })
		}
	}
	return withLines(c.Source, c.text, []string{msg}, []tablePos{at})[0]
}

// caseMismatch finds the first part of k that names a field of Config
// only when case is ignored: it returns how many parts of k lead up to it
// (0: none), and the field's real name. Keys inside a map (routes) are the
// user's own; an unknown part is Undecoded's to report.
func caseMismatch(k toml.Key) (int, string) {
	t := reflect.TypeFor[Config]()
	for i, part := range k {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return 0, "" // a map's keys, or below a value
		}
		name, found, next := "", false, t
		for j := range t.NumField() {
			f := t.Field(j)
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == part {
				found, next = true, f.Type
				break
			}
			if tag != "-" && tag != "" && strings.EqualFold(tag, part) {
				name = tag
			}
		}
		if !found {
			if name == "" {
				return 0, "" // unknown: Undecoded reports it
			}
			return i + 1, name
		}
		t = next
	}
	return 0, ""
}

// locateKey finds the line and column of an undecoded key in the TOML text:
// the first line that sets its last part inside a table whose header
// matches the key's table path. MetaData keeps no positions for keys it did
// not decode, so this reads the text; it falls back to line 1.
func locateKey(text string, k toml.Key) (int, int) {
	if len(k) == 0 {
		return 1, 1
	}
	current := ""
	// The inline tables and arrays a line is inside, when one is written
	// over several lines (TOML 1.1: admin = { allow = [...],\n listen = ""
	// }; server = [{...},\n {...}]): the keys of its later lines were
	// looked for as the table's own, and put at 1:1.
	var open []string
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if len(open) > 0 && tableHeaderLine.MatchString(line) {
			open = nil // a brace miscounted: a header is never inside an inline table
		}
		if len(open) > 0 {
			col, ok, after := keyInInline(raw, strings.Join(k, "."), current, open)
			if ok {
				return i + 1, col
			}
			open = after
			continue
		}
		if strings.HasPrefix(line, "[") {
			name := strings.Trim(line, "[] \t")
			if j := strings.IndexByte(name, ']'); j >= 0 {
				name = name[:j]
			}
			current = strings.ReplaceAll(name, " ", "")
			// the table, or one in it that its header makes ([bogus.sub]
			// for bogus)
			if current == strings.Join(k, ".") || strings.HasPrefix(current, strings.Join(k, ".")+".") {
				return i + 1, strings.Index(raw, "[") + 1
			}
			continue
		}
		// The key may sit in this table's header, or in a parent's as a
		// dotted key (a.b = 1) or inside an inline table (a = { b = 1 }).
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key = strings.TrimSpace(key)
		dotted := strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(key, " ", ""), `"`, ""), "'", "")
		if v := strings.TrimSpace(value); strings.HasPrefix(v, "{") || strings.HasPrefix(v, "[") {
			// an inline table, or an array (of them: server = [{...},),
			// that goes on past this line
			_, _, open = inlineScan(v[1:], []string{dotted}, "")
		}
		rest, ok := strings.CutPrefix(strings.Join(k, "."), current)
		if current != "" {
			rest, ok = strings.CutPrefix(rest, ".")
		}
		if !ok || rest == "" {
			continue
		}
		// rest itself, or a table that a dotted key makes (helth in
		// helth.check = "tcp")
		if dotted == rest || strings.HasPrefix(dotted, rest+".") {
			return i + 1, strings.Index(raw, key) + 1
		}
		if inner, ok := strings.CutPrefix(rest, dotted+"."); ok && strings.HasPrefix(strings.TrimLeft(value, " \t["), "{") {
			if j := strings.Index(raw, inner[strings.LastIndexByte(inner, '.')+1:]); j > strings.Index(raw, "{") {
				return i + 1, j + 1
			}
		}
	}
	return 1, 1
}

// tableHeaderLine is a line that is a table's header, [a.b] or [[a.b]].
var tableHeaderLine = regexp.MustCompile(`^\[\[?[A-Za-z0-9_\-."' \t]+\]\]?\s*(#.*)?$`)

// keyInInline finds key (dotted, from the top) on raw, a line inside the
// inline tables and arrays open (the keys they are the values of, "" for
// an array's element) of the table current, written over several lines:
// the column of the key that sets it, or of one that makes a table of it,
// if any; and what is open after the line.
func keyInInline(raw, key, current string, open []string) (int, bool, []string) {
	rest, ok := key, current == ""
	if !ok {
		rest, ok = strings.CutPrefix(key, current+".")
	}
	if !ok {
		rest = ""
	}
	return inlineScan(raw, open, rest)
}

// inlineScan reads the line s inside open (see keyInInline), looking for
// the key want (from the table the line is in; "" for none): a key set on
// it is want, or makes a table of it, or is a table want is in. It
// returns the column of that key, and open after the line: each "{" or
// "[" opened and not closed added, as the key it is the value of ("" for
// an element of an array), each one closed taken off.
func inlineScan(s string, open []string, want string) (int, bool, []string) {
	open = slices.Clip(open)
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			return 0, false, open
		case c == '=' && want != "":
			start := strings.LastIndexAny(s[:i], "{[,") + 1
			written := strings.TrimSpace(s[start:i])
			if written == "" {
				continue
			}
			path := slices.DeleteFunc(slices.Clone(open), func(p string) bool { return p == "" })
			path = append(path, strings.NewReplacer(" ", "", "\t", "", `"`, "", "'", "").Replace(written))
			dotted := strings.Join(path, ".")
			if dotted == want || strings.HasPrefix(want, dotted+".") || strings.HasPrefix(dotted, want+".") {
				return strings.Index(s[start:], written) + start + 1, true, open
			}
		case c == '{' || c == '[':
			name := ""
			if before := strings.TrimRight(s[:i], " \t"); strings.HasSuffix(before, "=") {
				key := strings.TrimRight(before[:len(before)-1], " \t")
				key = key[strings.LastIndexAny(key, "{[,")+1:]
				name = strings.NewReplacer(" ", "", "\t", "", `"`, "", "'", "").Replace(strings.TrimSpace(key))
			}
			open = append(open, name)
		case c == '}' || c == ']':
			open = open[:max(len(open)-1, 0)]
		}
	}
	return 0, false, open
}

// position is the line and column of a syntax error, both counted from its
// byte offset: the library's Line is the lexer's, which has already passed
// the newline after a token that ends a line, and would name the next line.
func position(data []byte, pe toml.ParseError) (int, int) {
	start := min(max(pe.Position.Start, 0), len(data))
	before := data[:start]
	return 1 + bytes.Count(before, []byte{'\n'}), start - bytes.LastIndexByte(before, '\n')
}

// typeMismatch is how the TOML library reports a value of the wrong type
// (max_sessions = "ten"): a plain error with the line and key in its text.
// A table made by a dotted key where a value is needed (log.level.x =
// "info") has no line of its own, and the error none.
var typeMismatch = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "([^"]*)"\): (.*)$`)

// mismatch renders a decode error that is not a ParseError as
// "LINE:COL: message" naming the key, like every other config error; an
// error of another shape keeps its own text after "1:1".
func mismatch(text string, err error) string {
	m := typeMismatch.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Sprintf("1:1: %v", err)
	}
	line, _ := strconv.Atoi(m[1])
	col := 1
	if m[1] == "" {
		// Found in the text, as an unknown key is: until 2026-12-01 the
		// error said 1:1 and the library's Go types.
		line, col = locateKey(text, toml.Key(strings.Split(m[2], ".")))
	} else if lines := strings.Split(text, "\n"); line >= 1 && line <= len(lines) {
		key := m[2][strings.LastIndexByte(m[2], '.')+1:]
		if i := strings.Index(lines[line-1], key); i >= 0 {
			col = i + 1
		}
	}
	msg := m[3]
	if t := tomlTypes.FindStringSubmatch(msg); t != nil {
		msg = fmt.Sprintf("%s given where %s is needed", typeName(t[1]), typeName(t[2]))
	} else if t := tableTypes.FindStringSubmatch(msg); t != nil {
		msg = fmt.Sprintf("%s given where %s is needed", typeName(t[2]), typeName(t[1]))
	}
	return fmt.Sprintf("%d:%d: key %q: %s", line, col, m[2], msg)
}

var tomlTypes = regexp.MustCompile(`^incompatible types: TOML value has type (.*); destination has type (.*)$`)

// tableTypes is the library's message for a value where a table is
// needed (keepalive = 5): "type mismatch for config.Keepalive: expected
// table but found int64".
var tableTypes = regexp.MustCompile(`^type mismatch for \S+: expected (\S+) but found (\S+)$`)

// typeName says a TOML type in the words of the TOML spec, from the Go
// names the library's message gives for values and destinations.
func typeName(t string) string {
	switch {
	case t == "string":
		return "a string"
	case t == "int64" || t == "integer":
		return "an integer"
	case t == "float64" || t == "float":
		return "a float"
	case t == "bool" || t == "boolean":
		return "a boolean"
	case strings.HasPrefix(t, "[]") || t == "slice":
		return "an array"
	case strings.HasPrefix(t, "map[") || t == "map" || t == "struct" || t == "table":
		return "a table"
	case strings.Contains(t, "time."):
		return "a date-time"
	case t == "primitive (string-like)":
		// The only such field is a Duration.
		return `a duration such as "30s"`
	}
	return t
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// unquoted explains a syntax error that is a string value written without
// its quotes (idle = 60s, listen = 127.0.0.1:1522, level = info), for a
// key that takes a string: the library says only what character it did
// not expect ("expected a top-level item to end with a newline, comment,
// or EOF, but got 's' instead", `Invalid float value: "127.0.0.1"`),
// naming no key. It returns the line and column of the value and a
// message that names the key and the fix; ok is false for any other error.
func unquoted(text string, pe toml.ParseError) (line, col int, msg string, ok bool) {
	off := min(max(pe.Position.Start, 0), len(text))
	start, end := off, off
	for start > 0 && !strings.ContainsRune(" \t=[{,\r\n", rune(text[start-1])) {
		start--
	}
	for end < len(text) && !strings.ContainsRune(" \t,]}#\r\n", rune(text[end])) {
		end++
	}
	tok := text[start:end]
	if tok == "" || strings.ContainsAny(tok, "\"'\\#") {
		return 0, 0, "", false
	}
	// Where a value starts (after '=', or in an array or inline table)
	// and ends (a key of the next line, after an array left open, is not
	// one: `backend = ` after allow = ["a", "b" lacks its ']').
	before := strings.TrimRight(text[:start], " \t")
	if before != "" && !strings.ContainsRune("=[,{\r\n", rune(before[len(before)-1])) {
		return 0, 0, "", false
	}
	if after := strings.TrimLeft(text[end:], " \t"); after != "" && !strings.ContainsRune(",]}#\r\n", rune(after[0])) {
		return 0, 0, "", false
	}
	var v map[string]any
	if _, err := toml.Decode("x = "+tok, &v); err == nil {
		return 0, 0, "", false // a value already: the error is elsewhere
	}
	if _, err := toml.Decode("x = \""+tok+"\"", &v); err != nil {
		return 0, 0, "", false
	}
	key := statementKey(text, start)
	if key == nil || !takesString(key) {
		return 0, 0, "", false
	}
	line, col = position([]byte(text), toml.ParseError{Position: toml.Position{Start: start}})
	return line, col, fmt.Sprintf("key %q: %s needs quotes: %q (TOML writes durations, addresses and names as strings)", key.String(), tok, tok), true
}

// statementKey is the key, from the top, whose value holds the offset at
// in text: the table of the last header before it, the keys of the inline
// tables it is in, and the key of its value (or of the array it is an
// element of, on a line of its own too). nil when there is none.
func statementKey(text string, at int) toml.Key {
	lineStart := strings.LastIndexByte(text[:at], '\n') + 1
	// An element of an array written over several lines: the statement
	// starts at the line of its key, and no line on the way is a header
	// (a header that lacks its ']' is no value).
	walked := false
	for line := text[lineStart:at]; !strings.Contains(line, "="); walked = true {
		if lineStart == 0 || strings.HasPrefix(strings.TrimSpace(line), "[") {
			return nil
		}
		prev := strings.LastIndexByte(text[:lineStart-1], '\n') + 1
		line, lineStart = text[prev:lineStart-1], prev
	}
	var table toml.Key
	for _, l := range strings.Split(text[:lineStart], "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "[") {
			continue
		}
		h := strings.TrimLeft(l, "[")
		if i := strings.IndexByte(h, ']'); i >= 0 {
			h = h[:i]
		}
		table = splitKey(h)
	}
	var inline toml.Key // keys of the inline tables open at the value
	var last, seg string
	quote := byte(0)
	depth := 0 // arrays open at the value
	for i := lineStart; i < at; i++ {
		ch := text[i]
		switch {
		case quote != 0:
			if ch == quote {
				quote = 0
			}
			seg += string(ch)
		case ch == '"' || ch == '\'':
			quote = ch
			seg += string(ch)
		case ch == '=':
			last, seg = seg, ""
		case ch == '{':
			inline = append(inline, splitKey(last)...)
			last, seg = "", ""
		case ch == '}':
			if len(inline) > 0 {
				inline = inline[:len(inline)-1]
			}
			seg = ""
		case ch == '[':
			depth++
			seg = ""
		case ch == ']':
			depth--
			seg = ""
		case ch == ',':
			seg = ""
		default:
			seg += string(ch)
		}
	}
	k := splitKey(last)
	if len(k) == 0 || walked && depth <= 0 {
		return nil
	}
	return append(append(slices.Clone(table), inline...), k...)
}

// splitKey splits a dotted key as written (a . b, "b") into its parts.
func splitKey(s string) toml.Key {
	var k toml.Key
	for _, p := range strings.Split(s, ".") {
		if p = strings.Trim(strings.TrimSpace(p), `"'`); p != "" {
			k = append(k, p)
		}
	}
	return k
}

// takesString tells whether the key k of Config holds a string: a name,
// an address, a duration, an element of a list of them, or a backend in
// routes.
func takesString(k toml.Key) bool {
	t, ok := typeAt(k)
	if !ok {
		return false
	}
	for t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	return t.Kind() == reflect.String || t == reflect.TypeFor[Duration]()
}

// firstInvalidUTF8 is the offset of the first byte of s that is not
// UTF-8, or -1.
func firstInvalidUTF8(s string) int {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				return i
			}
		}
	}
	return -1
}
