"""The zarr export's port methods on omero-py: autospec'd proxies (a wrong Slice method name or
argument count fails here), real omero.model objects, the HQL answered by the test."""
from __future__ import annotations

from unittest import mock

import omero
import pytest
from omero.rtypes import rint, rstring

from omero_cli_ext import omero_adapter as adapter
from omero_cli_ext import server
from test_adapter import ALL, Server


def image(iid, pid, restricted=False, physical=("MICROMETER", 0.5)):
    img = omero.model.ImageI(iid, True)
    img.name = rstring("img %d" % iid)
    pixels = omero.model.PixelsI(pid, True)
    for axis, size in zip("XYZCT", (1500, 700, 3, 2, 1)):
        setattr(pixels, "size" + axis, rint(size))
    ptype = omero.model.PixelsTypeI(1, True)
    ptype.value = rstring("uint16")
    pixels.pixelsType = ptype
    if physical:
        pixels.physicalSizeX = omero.model.LengthI(physical[1], physical[0])
        pixels.physicalSizeY = omero.model.LengthI(physical[1], physical[0])
    img.addPixels(pixels)
    perms = omero.model.PermissionsI("rwr---")
    perms._extendedRestrictions = [adapter.BINARYACCESS] if restricted else []
    img.details.setPermissions(perms)
    return img


@pytest.fixture
def srv():
    s = Server()
    s.pixels_store = mock.create_autospec(omero.api.RawPixelsStorePrx, instance=True)
    s.sf.createRawPixelsStore.return_value = s.pixels_store
    return s


def test_images_and_plates_of_reach_and_refuse_filesets(srv):
    srv.answers[adapter.HQL_ZARR_REACH["Dataset"]] = lambda p: [[rint(5), rint(11)], [rint(5), rint(12)]]
    srv.answers[adapter.HQL_ZARR_REACH["Screen"]] = lambda p: [[rint(2), None]]
    found = srv.port.images_and_plates_of([("Dataset", 5), ("Screen", 2), ("Dataset", 6)])
    assert found == {("Dataset", 5): ((11, 12), ()), ("Screen", 2): ((), ())}
    with pytest.raises(server.ServerError, match="cannot export a Fileset"):
        srv.port.images_and_plates_of([("Fileset", 1)])


def test_pixels_info_sizes_micrometres_containers_and_binary_access(srv):
    srv.answers[adapter.HQL_ZARR_IMAGE_CONTAINERS] = lambda p: [
        [rint(11), rstring("P"), rstring("D")], [rint(11), None, rstring("A")]]
    srv.answers[adapter.HQL_ZARR_IMAGES] = lambda p: [
        image(11, 101), image(12, 102, restricted=True, physical=("NANOMETER", 250))]
    info = srv.port.pixels_info([11, 12])
    assert info[11] == server.PixelsInfo(
        image_id=11, name="img 11", pixels_id=101, size_x=1500, size_y=700, size_z=3, size_c=2,
        size_t=1, pixel_type="uint16", physical_size_x=0.5, physical_size_y=0.5,
        physical_size_z=None, containers=("Dataset", "A"), binary_restricted=False)
    assert info[12].binary_restricted and info[12].physical_size_x == pytest.approx(0.25)


def test_open_pixels_reads_big_endian_tiles_through_raw_pixels_store(srv):
    srv.answers[adapter.HQL_ZARR_IMAGE_CONTAINERS] = lambda p: []
    srv.answers[adapter.HQL_ZARR_IMAGES] = lambda p: [image(11, 101)]
    srv.pixels_store.getTile.return_value = b"\x00\x01" * 6
    reader = srv.port.open_pixels(11)
    srv.pixels_store.setPixelsId.assert_called_once_with(101, True, ALL)
    assert reader.tile(0, 1, 0, 10, 20, 3, 2) == b"\x00\x01" * 6
    srv.pixels_store.getTile.assert_called_once_with(0, 1, 0, 10, 20, 3, 2, ALL)
    reader.close()
    srv.pixels_store.close.assert_called_once_with()


def test_open_pixels_of_an_unreadable_image_is_not_found(srv):
    srv.answers[adapter.HQL_ZARR_IMAGE_CONTAINERS] = lambda p: []
    srv.answers[adapter.HQL_ZARR_IMAGES] = lambda p: []
    with pytest.raises(server.NotFound):
        srv.port.open_pixels(11)
    srv.sf.createRawPixelsStore.assert_not_called()


def test_plates_wells_fields_acquisitions(srv):
    srv.answers[adapter.HQL_ZARR_PLATES] = lambda p: [[rint(3), rstring("pl"), None, None]]
    srv.answers[adapter.HQL_ZARR_PLATE_SCREENS] = lambda p: [[rint(3), rstring("S")]]
    srv.answers[adapter.HQL_ZARR_WELL_SAMPLES] = lambda p: [
        [rint(3), rint(1), rint(2), rint(51), rint(11), rint(7)],
        [rint(3), rint(1), rint(2), rint(50), rint(10), rint(7)],
        [rint(3), rint(0), rint(0), rint(52), rint(12), None]]
    srv.answers[adapter.HQL_ZARR_ACQUISITIONS] = lambda p: [[rint(3), rint(7), None]]
    plate = srv.port.plates([3])[3]
    assert plate == server.PlateInfo(
        id=3, name="pl", rows=2, columns=3, acquisitions=((7, "Run 7"),),
        containers=("Screen", "S"),
        wells=(server.WellInfo(0, 0, ((12, None),)),
               server.WellInfo(1, 2, ((10, 7), (11, 7)))))


def test_rendering_settings_an_engine_that_cannot_be_prepared_is_a_server_error(srv, monkeypatch):
    """omero-cli-render's RenderObject raises a bare Exception("Failed to prepare Rendering
    Engine for ...") when BlitzGateway's _prepareRenderingEngine answers False (a ValidationException
    from _prepareRE, or no Pixels): the port raises only its own errors."""
    import omero.gateway
    import omero_cli_render
    image = mock.Mock()
    gateway = mock.Mock()
    gateway.getObject.return_value = image
    monkeypatch.setattr(omero.gateway, "BlitzGateway", mock.Mock(return_value=gateway))
    monkeypatch.setattr(omero_cli_render, "RenderObject", mock.Mock(
        side_effect=Exception("Failed to prepare Rendering Engine for <ImageWrapper id=11>")))
    with pytest.raises(server.ServerError, match="Failed to prepare Rendering Engine"):
        srv.port.rendering_settings([11])
    image._closeRE.assert_called_once_with()
