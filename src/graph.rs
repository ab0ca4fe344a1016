//! Drawing a version DAG as text lanes, like `git log --graph`.
//!
//! Nodes come newest first in a topological order (children before parents: the
//! caller sorts by generation, which always exceeds every parent's). Each lane
//! waits for one version; a node takes the lane waiting for it (or a new one),
//! lanes that waited for the same node close into it, and its parents take over
//! its lane (the first) and new lanes (the others).

/// One node to draw: its id and its parents' ids.
pub struct GraphNode<'a> {
    pub id: &'a str,
    pub parents: &'a [String],
}

/// For each node: connector rows to print before it (`|/` where lanes close into
/// it) and the lane prefix of its own row (`* `, `| * `, ...).
pub fn lanes(nodes: &[GraphNode<'_>]) -> Vec<(Vec<String>, String)> {
    let mut lanes: Vec<Option<&str>> = Vec::new();
    let mut out = Vec::new();
    for n in nodes {
        let waiting: Vec<usize> = (0..lanes.len()).filter(|&i| lanes[i] == Some(n.id)).collect();
        let mut before = Vec::new();
        let col = match waiting.first() {
            Some(&c) => {
                // Lanes that also waited for this node merge into the first.
                if waiting.len() > 1 {
                    let conn: String = lanes
                        .iter()
                        .enumerate()
                        .map(|(i, l)| match (waiting[1..].contains(&i), l.is_some()) {
                            (true, _) => "/ ",
                            (false, true) => "| ",
                            (false, false) => "  ",
                        })
                        .collect();
                    before.push(conn.trim_end().replace("| / ", "|/").replace("| /", "|/"));
                    for &i in &waiting[1..] {
                        lanes[i] = None;
                    }
                }
                c
            }
            None => match lanes.iter().position(|l| l.is_none()) {
                Some(free) => {
                    lanes[free] = Some(n.id);
                    free
                }
                None => {
                    lanes.push(Some(n.id));
                    lanes.len() - 1
                }
            },
        };
        while lanes.last() == Some(&None) {
            lanes.pop();
        }
        let row: String = lanes
            .iter()
            .enumerate()
            .map(|(i, l)| match (i == col, l.is_some()) {
                (true, _) => "* ",
                (false, true) => "| ",
                (false, false) => "  ",
            })
            .collect();
        lanes[col] = n.parents.first().map(|p| p.as_str());
        for p in n.parents.iter().skip(1) {
            if lanes.contains(&Some(p.as_str())) {
                continue;
            }
            match lanes.iter().position(|l| l.is_none()) {
                Some(free) => lanes[free] = Some(p),
                None => lanes.push(Some(p)),
            }
        }
        while lanes.last() == Some(&None) {
            lanes.pop();
        }
        out.push((before, row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(spec: &[(&str, &[&str])]) -> String {
        let parents: Vec<Vec<String>> = spec
            .iter()
            .map(|(_, ps)| ps.iter().map(|p| p.to_string()).collect())
            .collect();
        let nodes: Vec<GraphNode> = spec
            .iter()
            .zip(&parents)
            .map(|((id, _), ps)| GraphNode { id, parents: ps })
            .collect();
        let mut s = String::new();
        for ((before, row), (id, _)) in lanes(&nodes).into_iter().zip(spec) {
            for b in before {
                s.push_str(&format!("{b}\n"));
            }
            s.push_str(&format!("{row}{id}\n"));
        }
        s
    }

    #[test]
    fn a_chain_is_one_lane() {
        assert_eq!(draw(&[("c", &["b"]), ("b", &["a"]), ("a", &[])]), "* c\n* b\n* a\n");
    }

    #[test]
    fn a_fork_shows_two_lanes_that_join_at_the_common_parent() {
        let g = draw(&[("x", &["a"]), ("y", &["a"]), ("a", &[])]);
        assert_eq!(g, "* x\n| * y\n|/\n* a\n");
    }

    #[test]
    fn a_merge_opens_a_lane_for_its_second_parent() {
        let g = draw(&[("m", &["x", "y"]), ("x", &["a"]), ("y", &["a"]), ("a", &[])]);
        assert_eq!(g, "* m\n* | x\n| * y\n|/\n* a\n");
    }
}
