package tns

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
)

// maxDepth bounds the nesting a description may have. Real ones nest about
// five deep; the bound keeps hostile input from growing the stack.
const maxDepth = 32

// Node is one (KEY=VALUE) pair of a description. A node holds either a
// Value or Children, never both.
type Node struct {
	Key      string
	Value    string
	Children []Node
}

// Description is the parsed text of Oracle Net's nested
// (KEY=VALUE)(KEY=(KEY=VALUE)...) syntax: the connect data of a CONNECT, the
// data of a REFUSE or ACCEPT, the address of a REDIRECT. Keys compare without
// regard to case.
type Description []Node

// ParseDescription parses one or more top-level groups, e.g.
// "(DESCRIPTION=(ERR=12514))" or "(ADDRESS=(PROTOCOL=tcp)(HOST=h)(PORT=1521))".
// Values may be quoted with double quotes, and a backslash escapes ( ) = " \.
// Whitespace between groups and trailing NUL bytes are ignored.
func ParseDescription(s string) (Description, error) {
	p := descParser{s: s}
	nodes, err := p.groups(0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	for p.i < len(p.s) && p.s[p.i] == 0 {
		p.i++
	}
	if p.i < len(p.s) {
		return nil, p.errorf("unexpected %q", p.s[p.i])
	}
	if len(nodes) == 0 {
		return nil, p.errorf("no (KEY=VALUE) group")
	}
	return nodes, nil
}

type descParser struct {
	s string
	i int
}

func (p *descParser) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: description: %s at byte %d", ErrMalformed, fmt.Sprintf(format, args...), p.i)
}

func (p *descParser) skipSpace() {
	for p.i < len(p.s) && isSpace(p.s[p.i]) {
		p.i++
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// groups reads (KEY=VALUE) groups until something else comes.
func (p *descParser) groups(depth int) ([]Node, error) {
	if depth >= maxDepth {
		return nil, p.errorf("nested deeper than %d", maxDepth)
	}
	var nodes []Node
	for {
		p.skipSpace()
		if p.i >= len(p.s) || p.s[p.i] != '(' {
			return nodes, nil
		}
		p.i++
		n, err := p.group(depth)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
}

// group reads KEY=VALUE) after an opening parenthesis.
func (p *descParser) group(depth int) (Node, error) {
	start := p.i
	for p.i < len(p.s) && p.s[p.i] != '=' {
		switch p.s[p.i] {
		case '(', ')', '"':
			return Node{}, p.errorf("unexpected %q in key", p.s[p.i])
		}
		p.i++
	}
	if p.i >= len(p.s) {
		return Node{}, p.errorf("key without '='")
	}
	key := strings.TrimSpace(p.s[start:p.i])
	if key == "" {
		return Node{}, p.errorf("empty key")
	}
	p.i++ // '='
	p.skipSpace()
	n := Node{Key: key}
	if p.i < len(p.s) && p.s[p.i] == '(' {
		children, err := p.groups(depth + 1)
		if err != nil {
			return Node{}, err
		}
		n.Children = children
	} else {
		v, err := p.value()
		if err != nil {
			return Node{}, err
		}
		n.Value = v
	}
	p.skipSpace()
	if p.i >= len(p.s) || p.s[p.i] != ')' {
		return Node{}, p.errorf("%s: missing ')'", key)
	}
	p.i++
	return n, nil
}

// value reads a plain value up to the closing parenthesis, honouring quotes
// and backslash escapes, and drops unquoted trailing blanks.
func (p *descParser) value() (string, error) {
	var b strings.Builder
	keep := 0 // length of b without unquoted trailing blanks
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == ')':
			return b.String()[:keep], nil
		case c == '(':
			return "", p.errorf("unexpected '(' in value")
		case c == '\\' && p.i+1 < len(p.s) && isEscapable(p.s[p.i+1]):
			b.WriteByte(p.s[p.i+1])
			keep = b.Len()
			p.i += 2
		case c == '"':
			p.i++
			for {
				if p.i >= len(p.s) {
					return "", p.errorf("unterminated quote")
				}
				c := p.s[p.i]
				if c == '"' {
					p.i++
					break
				}
				if c == '\\' && p.i+1 < len(p.s) && isEscapable(p.s[p.i+1]) {
					p.i++
					c = p.s[p.i]
				}
				b.WriteByte(c)
				p.i++
			}
			keep = b.Len()
		default:
			b.WriteByte(c)
			if !isSpace(c) {
				keep = b.Len()
			}
			p.i++
		}
	}
	return "", p.errorf("missing ')'")
}

// isEscapable reports the characters a backslash escapes. Before any other
// character a backslash is itself, so Windows paths in PROGRAM read right.
func isEscapable(c byte) bool {
	switch c {
	case '(', ')', '=', '"', '\\':
		return true
	}
	return false
}

// String renders d in canonical form: no blanks, values quoted when they
// hold characters the syntax gives meaning to. ParseDescription(d.String())
// gives d back.
func (d Description) String() string {
	var b strings.Builder
	writeNodes(&b, d)
	return b.String()
}

func writeNodes(b *strings.Builder, nodes []Node) {
	for _, n := range nodes {
		b.WriteByte('(')
		b.WriteString(n.Key)
		b.WriteByte('=')
		if len(n.Children) > 0 {
			writeNodes(b, n.Children)
		} else {
			writeValue(b, n.Value)
		}
		b.WriteByte(')')
	}
}

func writeValue(b *strings.Builder, v string) {
	plain := v == "" || (!isSpace(v[0]) && !isSpace(v[len(v)-1]))
	if plain && !strings.ContainsAny(v, "()=\"\\") {
		b.WriteString(v)
		return
	}
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
}

// Find returns the first node, in document order, that is reached by path:
// path[0] may sit at any depth, each further key must be a direct child of the
// one before. Find("CID", "PROGRAM") finds the program of the client id.
func (d Description) Find(path ...string) (Node, bool) {
	if len(path) == 0 {
		return Node{}, false
	}
	return find(d, path)
}

func find(nodes []Node, path []string) (Node, bool) {
	for _, n := range nodes {
		if strings.EqualFold(n.Key, path[0]) {
			if got, ok := descend(n, path[1:]); ok {
				return got, true
			}
		}
		if got, ok := find(n.Children, path); ok {
			return got, true
		}
	}
	return Node{}, false
}

func descend(n Node, path []string) (Node, bool) {
	if len(path) == 0 {
		return n, true
	}
	for _, c := range n.Children {
		if strings.EqualFold(c.Key, path[0]) {
			if got, ok := descend(c, path[1:]); ok {
				return got, true
			}
		}
	}
	return Node{}, false
}

// Value returns the value of the node Find(path...) reaches.
func (d Description) Value(path ...string) (string, bool) {
	n, ok := d.Find(path...)
	if !ok || len(n.Children) > 0 {
		return "", false
	}
	return n.Value, true
}

func (d Description) value(path ...string) string {
	v, _ := d.Value(path...)
	return v
}

// ServiceName is CONNECT_DATA's SERVICE_NAME, "" when absent.
func (d Description) ServiceName() string { return d.value("CONNECT_DATA", "SERVICE_NAME") }

// SID is CONNECT_DATA's SID, "" when absent.
func (d Description) SID() string { return d.value("CONNECT_DATA", "SID") }

// Command is CONNECT_DATA's COMMAND, "ping" for tnsping.
func (d Description) Command() string { return d.value("CONNECT_DATA", "COMMAND") }

// LooseService finds SERVICE_NAME, or else SID, in connect data that does
// not parse as a whole (ErrDescription): the value after the key's '=', up
// to the next ')', trimmed, with quotes and escapes as written. Clients put
// their program path and user name in CID unescaped, and a path such as
// C:\Program Files (x86)\app.exe breaks the syntax after the service.
func LooseService(data string) string {
	upper := asciiUpper(data) // byte for byte: offsets in upper are offsets in data
	for _, key := range []string{"(SERVICE_NAME", "(SID"} {
		i := strings.Index(upper, key)
		for i >= 0 {
			rest := strings.TrimLeft(data[i+len(key):], " \t")
			if v, ok := strings.CutPrefix(rest, "="); ok {
				if end := strings.IndexByte(v, ')'); end >= 0 {
					return strings.TrimSpace(v[:end])
				}
			}
			next := strings.Index(upper[i+1:], key)
			if next < 0 {
				break
			}
			i += 1 + next
		}
	}
	return ""
}

// ParseDescriptionCID parses connect data as ParseDescription does, except
// that parentheses that pair up inside the text values of CID's PROGRAM,
// HOST and USER are read as escaped. Drivers write those values unescaped
// (go-ora: os.Args[0], such as C:\Program Files (x86)\app.exe), and a
// listener takes such a CONNECT. Anything else that fails still fails: a
// pair that holds nothing or an '=', a value that is a list, the same keys
// outside CID.
func ParseDescriptionCID(s string) (Description, error) {
	var escape []int // offsets of the parentheses to read as escaped
	upper := asciiUpper(s)
	for from := 0; ; {
		i := strings.Index(upper[from:], "(CID")
		if i < 0 {
			break
		}
		k := skipBlanks(s, from+i+len("(CID"))
		if k < len(s) && s[k] == '=' {
			escape = append(escape, cidTextParens(s, upper, k+1)...)
		}
		from += i + 1
	}
	if len(escape) == 0 {
		return ParseDescription(s)
	}
	slices.Sort(escape) // a pair inside another was found first
	var b strings.Builder
	last := 0
	for _, at := range escape {
		b.WriteString(s[last:at])
		b.WriteByte('\\')
		last = at
	}
	b.WriteString(s[last:])
	return ParseDescription(b.String())
}

// cidTextParens walks the groups of the CID list that starts at s[i] and
// returns the offsets of the parentheses that pair up inside the text
// values of PROGRAM, HOST and USER. It stops at the first thing it does not
// read as such a list.
func cidTextParens(s, upper string, i int) []int {
	var out []int
	for {
		i = skipBlanks(s, i)
		if i >= len(s) || s[i] != '(' {
			return out
		}
		eq := strings.IndexAny(s[i+1:], "=()\"")
		if eq < 0 || s[i+1+eq] != '=' {
			return out
		}
		key := strings.TrimSpace(upper[i+1 : i+1+eq])
		i = skipBlanks(s, i+1+eq+1)
		if i < len(s) && s[i] == '(' {
			return out // a list, not text
		}
		end, parens, ok := textValue(s, i)
		if !ok {
			return out
		}
		switch key {
		case "PROGRAM", "HOST", "USER":
			out = append(out, parens...)
		default:
			if len(parens) > 0 {
				return out
			}
		}
		i = end + 1 // past the value's ')'
	}
}

// textValue reads a text value from s[i] as the parser does (quotes,
// backslash escapes) up to the ')' that ends it, taking parentheses that
// pair up as text. It returns the offset of that ')' and the offsets of
// the pairs; ok is false when a pair holds nothing, an '=' or a quote, or
// the value does not end.
func textValue(s string, i int) (end int, parens []int, ok bool) {
	var open []int
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && i+1 < len(s) && isEscapable(s[i+1]):
			i++
		case c == '"' && len(open) > 0:
			return 0, nil, false // a quote in a pair: an '=' or nothing could hide in it
		case c == '"':
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && isEscapable(s[i+1]) {
					i++
				}
			}
			if i >= len(s) {
				return 0, nil, false
			}
		case c == '=' && len(open) > 0:
			return 0, nil, false
		case c == '(':
			open = append(open, i)
		case c == ')' && len(open) == 0:
			return i, parens, true
		case c == ')':
			o := open[len(open)-1]
			if strings.TrimSpace(s[o+1:i]) == "" {
				return 0, nil, false
			}
			open = open[:len(open)-1]
			parens = append(parens, o, i)
		}
	}
	return 0, nil, false
}

// asciiUpper upper-cases a-z only, one byte for one: strings.ToUpper
// changes lengths (an invalid byte becomes a 3-byte U+FFFD), so its
// offsets would not index the original.
func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// Program is the client program named in CID, "" when absent.
func (d Description) Program() string { return d.value("CID", "PROGRAM") }

// ClientHost is the client host named in CID, "" when absent.
func (d Description) ClientHost() string { return d.value("CID", "HOST") }

// ClientUser is the operating system user named in CID, "" when absent.
func (d Description) ClientUser() string { return d.value("CID", "USER") }

// Err returns the listener's error number (ERR=n) and whether there is one.
func (d Description) Err() (int, bool) {
	v, ok := d.Value("ERR")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 31)
	if err != nil {
		return 0, false
	}
	return int(n), true
}

// VSNNUM returns the listener's version number and whether there is one.
func (d Description) VSNNUM() (uint32, bool) {
	v, ok := d.Value("VSNNUM")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

// DecodeVSNNUM turns a VSNNUM into the dotted version Oracle prints:
// 318767104 is "19.0.0.0.0".
func DecodeVSNNUM(v uint32) string {
	return fmt.Sprintf("%d.%d.%d.%d.%d", v>>24, v>>20&0xF, v>>12&0xFF, v>>8&0xF, v&0xFF)
}

// Address is one (ADDRESS=(PROTOCOL=..)(HOST=..)(PORT=..)).
type Address struct {
	Protocol string
	Host     string
	Port     string
}

// HostPort returns "host:port" as net.Dial takes it. An IPv6 address in
// brackets (HOST=[::1], as a URL or Easy Connect writes one; Oracle's own
// descriptors write it bare) is dialed without them: they were doubled,
// "[[::1]]:1521", which no dial takes, and a followed REDIRECT to it
// failed as if the server that sent it were down.
func (a Address) HostPort() string {
	host := a.Host
	if inner, ok := strings.CutPrefix(host, "["); ok {
		if inner, ok = strings.CutSuffix(inner, "]"); ok && strings.Contains(inner, ":") {
			host = inner
		}
	}
	return net.JoinHostPort(host, a.Port)
}

// Addresses returns every ADDRESS in document order.
func (d Description) Addresses() []Address {
	var out []Address
	var walk func([]Node)
	walk = func(nodes []Node) {
		for _, n := range nodes {
			if strings.EqualFold(n.Key, "ADDRESS") {
				sub := Description(n.Children)
				out = append(out, Address{
					Protocol: sub.direct("PROTOCOL"),
					Host:     sub.direct("HOST"),
					Port:     sub.direct("PORT"),
				})
				continue
			}
			walk(n.Children)
		}
	}
	walk(d)
	return out
}

// direct returns the value of a top-level key of d.
func (d Description) direct(key string) string {
	for _, n := range d {
		if strings.EqualFold(n.Key, key) && len(n.Children) == 0 {
			return n.Value
		}
	}
	return ""
}
